"""The rating page through Flask's test client and a real waitress server: what it shows, what it
records, and what it refuses (recording nothing)."""

from __future__ import annotations

import http.cookiejar
import re
import sqlite3
import threading
import urllib.error
import urllib.parse
import urllib.request

import pytest
from markupsafe import escape

from covip.cli import main as covip_main
from covip.human_eval.app import create_app
from covip.human_eval.settings import HumanEvalSettings
from covip.human_eval.store import VoteStore
from covip.human_eval.study import StudyError, load_study

from support.study_data import POLICIES, SEED, write_run

SETTINGS = HumanEvalSettings(items_per_rater=6, shared_items=3)


@pytest.fixture
def served(study_run, tmp_path):
    study = load_study(study_run.outdir, POLICIES, SETTINGS, SEED)
    store = VoteStore(tmp_path / "votes.sqlite")
    app = create_app(study, store, "k" * 40)
    app.testing = True
    return app, study, store


def form_fields(html: str) -> dict[str, str]:
    return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', html))


def enter(client, store, name):
    token = store.add_rater(name)
    response = client.get(f"/r/{token}")
    assert response.status_code == 302 and response.headers["Location"].endswith("/rate")
    return token


def rows(store):
    with sqlite3.connect(store.path) as db:
        return db.execute("SELECT rater, item_id, policy_a, policy_b, choice_context, choice_image FROM votes").fetchall()


def count(store, table):
    with sqlite3.connect(store.path) as db:
        return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def test_a_rater_rates_in_order_and_the_server_knows_which_policy_was_a(served):
    app, study, store = served
    client = app.test_client()
    enter(client, store, "ana")
    plan = study.plan.for_rater("ana")
    page = client.get("/rate").get_data(as_text=True)
    assert "1 of 6" in page
    first = plan[0]
    for side, policy in (("a", first.policy_a), ("b", first.policy_b)):
        shown = f'id="caption-{side}"><h2>{side.upper()}</h2><p>{escape(study.caption(policy, first.sample_id))}</p>'
        assert shown in page
    fields = form_fields(page)
    assert fields["item"] == first.item_id and fields["plan_version"] == study.plan.version
    assert not set(POLICIES) & {fields["rater"], fields["csrf"]}  # sides never travel to the browser
    response = client.post("/vote", data={**fields, "context": "A", "image": "tie"})
    assert response.status_code == 303
    assert rows(store) == [("ana", first.item_id, first.policy_a, first.policy_b, "A", "tie")]
    assert "2 of 6" in client.get("/rate").get_data(as_text=True)


def test_a_second_submit_of_the_same_form_records_one_vote(served):
    app, _, store = served
    client = app.test_client()
    enter(client, store, "ana")
    fields = form_fields(client.get("/rate").get_data(as_text=True))
    client.post("/vote", data={**fields, "context": "A", "image": "A"})
    again = client.post("/vote", data={**fields, "context": "B", "image": "B"}, follow_redirects=True)
    assert "already been answered; your first answer was kept" in again.get_data(as_text=True)
    assert [r[4:] for r in rows(store)] == [("A", "A")]
    assert count(store, "ignored_submits") == 1


def test_an_unknown_rater_link_is_refused_and_records_nothing(served):
    app, _, store = served
    client = app.test_client()
    response = client.get("/r/not-a-real-token")
    assert response.status_code == 404 and "Unknown rater link" in response.get_data(as_text=True)
    assert client.get("/rate").status_code == 403
    assert client.post("/vote", data={"item": "x", "context": "A", "image": "A"}).status_code == 403
    assert count(store, "votes") == count(store, "views") == count(store, "raters") == 0


@pytest.mark.parametrize("tamper, status, message", [
    ({"csrf": "forged"}, 400, "not issued by this page"),
    ({"csrf": ""}, 400, "not issued by this page"),
    ({"rater": "ben"}, 409, "another rater link"),
    ({"plan_version": "0123456789abcdef"}, 409, "plan &#39;0123456789abcdef&#39;"),
    ({"item": "nope:blind:oracle"}, 404, "Item &#39;nope:blind:oracle&#39; is not in your list"),
    ({"context": None}, 400, "for the &#39;context&#39; question"),
    ({"image": "maybe"}, 400, "for the &#39;image&#39; question"),
])
def test_a_bad_vote_is_refused_with_the_reason_and_records_nothing(served, tamper, status, message):
    app, _, store = served
    client = app.test_client()
    enter(client, store, "ana")
    data = {**form_fields(client.get("/rate").get_data(as_text=True)), "context": "A", "image": "B", **tamper}
    response = client.post("/vote", data={k: v for k, v in data.items() if v is not None})
    assert response.status_code == status
    assert message in response.get_data(as_text=True)
    assert count(store, "votes") == count(store, "ignored_submits") == 0


def test_an_item_of_another_raters_plan_is_refused(served):
    app, study, store = served
    client = app.test_client()
    enter(client, store, "ana")
    mine = {item.item_id for item in study.plan.for_rater("ana")}
    foreign = next(c.item_id for c in study.plan.comparisons if c.item_id not in mine)
    fields = form_fields(client.get("/rate").get_data(as_text=True))
    response = client.post("/vote", data={**fields, "item": foreign, "context": "A", "image": "B"})
    assert response.status_code == 404 and foreign in response.get_data(as_text=True)
    assert count(store, "votes") == 0


def test_a_rater_resumes_in_a_new_session_and_finishes(served):
    app, study, store = served
    first = app.test_client()
    token = enter(first, store, "ana")
    for _ in range(2):
        fields = form_fields(first.get("/rate").get_data(as_text=True))
        first.post("/vote", data={**fields, "context": "B", "image": "A"})
    later = app.test_client()  # another browser: no cookie, only the link
    assert later.get(f"/r/{token}").status_code == 302
    page = later.get("/rate").get_data(as_text=True)
    assert "3 of 6" in page and form_fields(page)["item"] == study.plan.for_rater("ana")[2].item_id
    for _ in range(4):
        fields = form_fields(later.get("/rate").get_data(as_text=True))
        later.post("/vote", data={**fields, "context": "tie", "image": "tie"})
    assert "answered all 6 comparisons" in later.get("/rate").get_data(as_text=True)
    assert {r[1] for r in rows(store)} == {item.item_id for item in study.plan.for_rater("ana")}


def test_names_are_escaped_and_pages_carry_protective_headers(served):
    app, _, store = served
    client = app.test_client()
    enter(client, store, '<script>alert("x")</script>')
    response = client.get("/rate")
    page = response.get_data(as_text=True)
    assert "<script>alert" not in page and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Cache-Control"] == "no-store"
    cookie = client.get_cookie("covip_rater")
    assert cookie is not None and cookie.http_only and cookie.same_site == "Lax"


def test_images_come_from_the_parquet_bytes_and_only_for_the_raters_samples(served, study_run):
    app, study, store = served
    client = app.test_client()
    sample = study.plan.for_rater("ana")[0].sample_id
    assert client.get(f"/image/{sample}/query").status_code == 403
    enter(client, store, "ana")
    row = next(r for r in study_run.test_rows if r["sample_id"] == sample)
    query = client.get(f"/image/{sample}/query")
    assert query.status_code == 200 and query.mimetype == "image/png"
    assert query.get_data() == row["query_image"]["bytes"]
    assert client.get(f"/image/{sample}/context-1").get_data() == row["context_images"][1]["bytes"]
    assert client.get(f"/image/{sample}/context-99").status_code == 404
    assert client.get(f"/image/{sample}/../../etc").status_code == 404
    others = {r["sample_id"] for r in study_run.test_rows} - {i.sample_id for i in study.plan.for_rater("ana")}
    for other in others:
        assert client.get(f"/image/{other}/query").status_code == 404


def test_a_failed_caption_is_never_shown_and_its_pairs_are_counted(study_run):
    study = load_study(study_run.outdir, POLICIES, HumanEvalSettings(items_per_rater=100, shared_items=0), SEED)
    failed = study_run.failed_sample
    assert study.plan.n_excluded == 2 and study.plan.excluded_reasons == {"blind failed": 2}
    for item in study.plan.for_rater("ana"):
        assert not (item.sample_id == failed and "blind" in (item.policy_a, item.policy_b))
    assert len(study.plan.comparisons) == 3 * len(study_run.test_rows) - 2


def test_a_captions_file_without_the_needed_policy_is_named(study_run, tmp_path):
    captions = dict(study_run.captions)
    captions["looking"] = captions["oracle"]  # a file at looking.parquet holding oracle's rows
    write_run(tmp_path / "run", study_run.test_rows, captions)
    with pytest.raises(StudyError, match=r"looking\.parquet: holds no caption of policy 'looking' \(policies in the file: \['oracle'\]\)"):
        load_study(tmp_path / "run", ["oracle", "looking"], SETTINGS, SEED)
    with pytest.raises(StudyError, match=r"gpt\.parquet: no captions file for policy 'gpt'"):
        load_study(tmp_path / "run", ["oracle", "gpt"], SETTINGS, SEED)


def test_a_study_with_nothing_to_show_refuses_to_start(study_run, tmp_path):
    captions = {"oracle": study_run.captions["oracle"],
                "blind": [dict(row, status="failed", caption=None) for row in study_run.captions["blind"]]}
    write_run(tmp_path / "run", study_run.test_rows, captions)
    n = len(study_run.test_rows)
    with pytest.raises(StudyError, match=rf"nothing to rate .* {n} comparison\(s\) left out .*blind failed: {n}"):
        load_study(tmp_path / "run", ["oracle", "blind"], SETTINGS, SEED)


def test_the_command_line_refuses_a_missing_policy_before_creating_anything(study_run, tmp_path, capsys):
    votes = tmp_path / "votes.sqlite"
    config = study_run.config(tmp_path / "config.yaml", votes)
    code = covip_main(["human-eval", "serve", "--configfile", str(config), "--policies", "oracle", "gpt", "--port", "0"])
    assert code == 2
    assert "no captions file for policy 'gpt'" in capsys.readouterr().err
    assert not votes.exists()


def test_raters_are_added_and_listed_from_the_command_line(study_run, tmp_path, capsys):
    config = study_run.config(tmp_path / "config.yaml", tmp_path / "votes.sqlite")
    assert covip_main(["human-eval", "raters", "add", "ana", "--configfile", str(config),
                       "--public-url", "https://study.example.org/covip/"]) == 0
    link = capsys.readouterr().out.strip()
    assert re.fullmatch(r"https://study\.example\.org/covip/r/[A-Za-z0-9_-]{32}", link)
    assert VoteStore(tmp_path / "votes.sqlite").rater_for_token(link.rsplit("/", 1)[1]) == "ana"
    assert covip_main(["human-eval", "raters", "add", "ana", "--configfile", str(config)]) == 2
    assert "exists already" in capsys.readouterr().err
    assert covip_main(["human-eval", "raters", "list", "--configfile", str(config)]) == 0
    assert capsys.readouterr().out.startswith("ana\t0 votes")


# -- several raters at once, against the real server --------------------------------------------

class Browser:
    """A client with its own cookies, like one browser tab set."""

    def __init__(self, base: str):
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def get(self, path: str) -> str:
        with self.opener.open(self.base + path, timeout=30) as response:
            return response.read().decode()

    def post(self, path: str, data: dict) -> str:
        body = urllib.parse.urlencode(data).encode()
        with self.opener.open(self.base + path, data=body, timeout=30) as response:
            return response.read().decode()


@pytest.fixture
def live_server(served):
    from waitress import create_server

    app, study, store = served
    server = create_server(app, host="127.0.0.1", port=0, threads=8)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.effective_port}", study, store
    server.close()


def test_concurrent_raters_and_duplicate_tabs_record_each_vote_once(live_server):
    base, study, store = live_server
    raters = ["ana", "ben", "cleo", "dov"]
    tokens = {name: store.add_rater(name) for name in raters}
    errors = []

    def rate(name, tabs):
        try:
            clients = [Browser(base) for _ in range(tabs)]
            for client in clients:
                client.get(f"/r/{tokens[name]}")
            for _ in range(len(study.plan.for_rater(name))):
                # Every tab loads the same item, then all submit it at once.
                pages = [client.get("/rate") for client in clients]
                fields = [form_fields(page) for page in pages]
                senders = [threading.Thread(target=c.post, args=("/vote", {**f, "context": "A", "image": "B"}))
                           for c, f in zip(clients, fields)]
                for sender in senders:
                    sender.start()
                for sender in senders:
                    sender.join()
        except Exception as error:  # noqa: BLE001 - reported below, with the rater
            errors.append((name, error))

    workers = [threading.Thread(target=rate, args=(name, 1 if k % 2 else 3)) for k, name in enumerate(raters)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert not errors
    votes = rows(store)
    assert len(votes) == sum(len(study.plan.for_rater(name)) for name in raters)
    assert len({(v[0], v[1]) for v in votes}) == len(votes)
    for name in raters:
        expected = {(i.item_id, i.policy_a, i.policy_b) for i in study.plan.for_rater(name)}
        assert {(v[1], v[2], v[3]) for v in votes if v[0] == name} == expected
    # ana and cleo submitted each item from three tabs: two of every three submits were ignored.
    assert count(store, "ignored_submits") == 2 * 2 * len(study.plan.for_rater("ana"))
