"""The rating page: a Flask app over a Study (what to show) and a VoteStore (where votes go).

A rater opens their link (/r/<token>) once; the server checks the token, keeps the rater's name in a
signed session cookie and sends them to /rate, which always shows their first item without a vote
(so a reload, a new browser or a restart resumes where they stopped). The policies behind A and B
are never sent to the browser: the form carries the item's id and the two choices, and the server
looks the sides up in the plan. Every refusal (unknown link, stale or forged form, an item outside
the rater's plan) is answered with a page that says why, and records nothing.
"""

from __future__ import annotations

import hmac
import logging
import secrets

from flask import Flask, abort, flash, redirect, render_template, request, session, url_for

from covip.human_eval.store import CHOICES, VoteStore
from covip.human_eval.study import Study

log = logging.getLogger("covip.human_eval")

CRITERIA = ("context", "image")
# Content-Security-Policy: only this server's own scripts, styles and images; no framing.
_CSP = ("default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'")


class Refusal(Exception):
    """A request answered with an explanation page and nothing recorded."""

    def __init__(self, status: int, title: str, detail: str):
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail


def _image_type(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return None


def _as_browser_image(data: bytes) -> tuple[bytes, str]:
    """The stored bytes when a browser can show them as they are, else the image re-encoded as PNG."""
    kind = _image_type(data)
    if kind:
        return data, kind
    from covip.core.io import decode_image, encode_png

    return encode_png(decode_image(data, "test split image")), "image/png"


def create_app(study: Study, store: VoteStore, secret_key: str, *, secure_cookies: bool = False) -> Flask:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secret_key,
        SESSION_COOKIE_NAME="covip_rater",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=secure_cookies,
        MAX_CONTENT_LENGTH=64 * 1024,  # a vote is a few fields
    )
    plan = study.plan

    def current_rater() -> str:
        rater = session.get("rater")
        if not rater or not store.rater_exists(rater):
            raise Refusal(403, "No rater link", "Open the personal link you were given to start or resume rating.")
        return rater

    def next_item(rater: str):
        done = store.voted_items(rater, plan.version)
        items = plan.for_rater(rater)
        pending = [item for item in items if item.item_id not in done]
        return (pending[0] if pending else None), len(items) - len(pending), len(items)

    @app.errorhandler(Refusal)
    def refused(error: Refusal):
        log.info("refused %s %s: %s", request.method, request.path, error.detail)
        return render_template("message.html", title=error.title, detail=error.detail), error.status

    @app.errorhandler(404)
    def not_found(_error):
        return render_template("message.html", title="Not found", detail="There is no such page."), 404

    @app.after_request
    def headers(response):
        response.headers["Content-Security-Policy"] = _CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"  # the rater link must not leak to other sites
        if response.mimetype == "text/html":
            response.headers["Cache-Control"] = "no-store"  # the back button asks the server again
        return response

    @app.get("/healthz")
    def health():
        return {"ok": True, "plan_version": plan.version, "comparisons": len(plan.comparisons)}

    @app.get("/")
    def index():
        if session.get("rater"):
            return redirect(url_for("rate"))
        raise Refusal(403, "No rater link", "Open the personal link you were given to start or resume rating.")

    @app.get("/r/<token>")
    def enter(token: str):
        rater = store.rater_for_token(token)
        if rater is None:
            raise Refusal(404, "Unknown rater link",
                          "This rater link is not known to this study. Check that you copied the whole link, "
                          "or ask the study's organiser for a new one.")
        session.clear()
        session["rater"] = rater
        session["csrf"] = secrets.token_urlsafe(32)
        return redirect(url_for("rate"))

    @app.get("/rate")
    def rate():
        rater = current_rater()
        item, done, total = next_item(rater)
        if item is None:
            return render_template("done.html", rater=rater, total=total)
        store.record_view(rater, plan.version, item.item_id)
        text = study.texts[item.sample_id]
        contexts = [
            {"index": k + 1, "name": name, "dialogue": dialogue,
             "image": url_for("image", sample_id=item.sample_id, slot=f"context-{k}")}
            for k, (name, dialogue) in enumerate(zip(text.names, text.dialogues))
        ]
        return render_template(
            "item.html", rater=rater, position=done + 1, total=total, item_id=item.item_id,
            plan_version=plan.version, csrf=session.get("csrf", ""), contexts=contexts,
            query_image=url_for("image", sample_id=item.sample_id, slot="query"),
            caption_a=study.caption(item.policy_a, item.sample_id),
            caption_b=study.caption(item.policy_b, item.sample_id),
        )

    @app.post("/vote")
    def vote():
        rater = current_rater()
        form = request.form
        expected = session.get("csrf", "")
        if not expected or not hmac.compare_digest(form.get("csrf", ""), expected):
            raise Refusal(400, "Form expired", "This form was not issued by this page in your session (or your "
                          "session ended). Nothing was recorded; the next page shows where you are.")
        if form.get("rater") != rater:
            raise Refusal(409, "Another rater", "This form was opened for another rater link in this browser. "
                          "Nothing was recorded; open your own link again.")
        if form.get("plan_version") != plan.version:
            raise Refusal(409, "The study changed", f"This form belongs to plan {form.get('plan_version')!r}, the "
                          f"study now runs plan {plan.version!r}. Nothing was recorded; reload to continue.")
        item_id = form.get("item", "")
        item = plan.item(rater, item_id)
        if item is None:
            raise Refusal(404, "Unknown item", f"Item {item_id!r} is not in your list of comparisons. Nothing "
                          "was recorded.")
        choices = {}
        for criterion in CRITERIA:
            choice = form.get(criterion)
            if choice not in CHOICES:
                raise Refusal(400, "Incomplete answer", f"Choose A, B or tie for the '{criterion}' question "
                              f"(got {choice!r}). Nothing was recorded.")
            choices[criterion] = choice
        stored = store.record_vote(rater, plan.version, item.item_id, item.position, item.sample_id,
                                   item.policy_a, item.policy_b, choices["context"], choices["image"])
        if not stored:
            flash("That comparison had already been answered; your first answer was kept.")
        return redirect(url_for("rate"), code=303)

    @app.get("/image/<sample_id>/<slot>")
    def image(sample_id: str, slot: str):
        rater = current_rater()
        if not any(item.sample_id == sample_id for item in plan.for_rater(rater)) or study.images is None:
            abort(404)
        data = study.images.get(sample_id, slot)
        if data is None:
            abort(404)
        body, kind = _as_browser_image(data)
        response = app.response_class(body, mimetype=kind)
        response.headers["Cache-Control"] = "private, max-age=3600"
        return response

    return app
