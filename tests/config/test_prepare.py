"""covip.config.prepare: the checks and per-rule answers the workflow takes at parse time."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from covip.clients.backends import UnknownBackendError, UnknownOptionError
from covip.config.prepare import ConfigError, prepare
from covip.core.fingerprint import code_fingerprint
from support.workflow import validated_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def default_config():
    return validated_config()


def prepared(config, **changes):
    config = copy.deepcopy(config)
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            config[section][name] = value
        else:
            config[section] = value
    return prepare(config, ROOT)


def test_outdir_placeholder_is_resolved_and_trained_policies_are_known(default_config):
    prep = prepared(default_config, outdir="elsewhere")
    assert prep.models["tiny_vlm_gspo"].model == "elsewhere/training/tiny_vlm_gspo/model"
    assert prep.is_built_here("elsewhere/training/tiny_vlm_gspo/model")
    inputs = prep.model_inputs("tiny_vlm_gspo", test="t.parquet")
    assert inputs == {"test": "t.parquet", "model_tiny_vlm_gspo": "elsewhere/training/tiny_vlm_gspo/model"}
    assert prep.model_inputs("oracle") == {}  # a stand-in has no folder to wait for


@pytest.mark.parametrize("section, value, named", [
    ("evaluation__policies", ["oracle", "gpt9"], "evaluation.policies: 'gpt9'"),
    ("evaluation__judges", ["nobody"], "evaluation.judges: 'nobody'"),
    ("evaluation__diagnostic_judge", "nobody", "evaluation.diagnostic_judge: 'nobody'"),
])
def test_an_undefined_role_fails_naming_section_and_entries(default_config, section, value, named):
    with pytest.raises(ConfigError, match=named) as error:
        prepared(default_config, **{section: value})
    assert "lexical_judge" in str(error.value)  # the entries that do exist are listed


def test_an_unknown_backend_or_registry_key_fails_naming_the_entry(default_config):
    config = copy.deepcopy(default_config)
    config["models"]["oracle"] = {"backend": "reference_oracel"}
    with pytest.raises(UnknownBackendError, match=r"models\.oracle\.backend: unknown backend 'reference_oracel'"):
        prepare(config, ROOT)
    config["models"]["oracle"] = {"backend": "reference_oracle", "temprature": 0}
    with pytest.raises(ValueError, match=r"models\.oracle: unknown key\(s\) \['temprature'\]"):
        prepare(config, ROOT)


def test_a_bad_training_run_fails_at_parse_time(default_config):
    config = copy.deepcopy(default_config)
    config["training"]["runs"]["tiny_vlm_gspo"]["learning_rat"] = 1e-3
    with pytest.raises(ValueError, match=r"training\.runs\.tiny_vlm_gspo: unknown setting\(s\) \['learning_rat'\]"):
        prepare(config, ROOT)


def test_resources_come_from_the_rule_own_name(default_config):
    prep = prepared(default_config)
    assert prep.threads("train_gspo") == 2 and prep.threads("make_splits") == 1  # rules.train_gspo vs default
    caption = prep.resources("caption")
    assert caption["mem_mb"] == 3000 and callable(caption["gpu"])
    assert prep.resources("make_splits") == {"mem_mb": 1500, "gpu": 0}


def test_gpus_of_a_model_rule_follow_its_model(default_config):
    config = copy.deepcopy(default_config)
    config["models"]["tiny_vlm"]["gpus"] = 2
    config["resources"]["rules"]["report"] = {"gpu": 1}
    prep = prepare(config, ROOT)
    assert prep.gpus("caption", {"policy": "tiny_vlm"}) == 2
    assert prep.gpus("caption", {"policy": "oracle"}) == 0
    assert prep.resources("caption")["gpu"]({"policy": "tiny_vlm"}) == 2
    assert prep.gpus("report") == 1
    assert prep.gpus("train_gspo", {"run": "tiny_vlm_gspo"}) == prep.training_settings("tiny_vlm_gspo").gpus


def test_the_conda_env_follows_the_backend_the_job_runs(default_config):
    config = copy.deepcopy(default_config)
    config["models"]["served"] = {"backend": "vllm", "model": "Qwen/Qwen3-VL-8B-Instruct", "gpus": 1}
    config["evaluation"]["policies"].append("served")
    prep = prepare(config, ROOT)
    assert prep.conda_env("caption", {"policy": "oracle"}) == "../envs/data.yaml"
    assert prep.conda_env("caption", {"policy": "tiny_vlm"}) == "../envs/train.yaml"
    assert prep.conda_env("caption", {"policy": "served"}) == "../envs/vllm.yaml"
    # A LAR job runs the policy and the judge: the heavier env serves both.
    assert prep.conda_env("diagnose", {"policy": "served"}) == "../envs/vllm.yaml"
    assert prep.conda_env("make_splits") == "../envs/data.yaml"
    assert prep.conda_env("train_gspo", {"run": "tiny_vlm_gspo"}) == "../envs/train.yaml"


def test_code_fingerprint_follows_the_workflow_script_imports_and_the_backend(default_config):
    prep = prepared(default_config)
    oracle = prep.code("caption.py", "caption", {"policy": "oracle"})
    tiny = prep.code("caption.py", "caption", {"policy": "tiny_vlm"})
    assert oracle != tiny  # the backend module is part of it
    assert oracle == code_fingerprint("covip.core.schemas", "covip.stages.captioning", "covip.workflow.run",
                                      "covip.local.reference_policies")
    # The shell rule's entry module, not the CLI that launches it.
    assert prep.code("covip.training.job", "train_gspo", {"run": "tiny_vlm_gspo"}) == code_fingerprint(
        "covip.training.job", "covip.local.lexical_judge")


def test_lar_jobs_call_the_diagnostic_judge_too(default_config):
    prep = prepared(default_config)
    assert prep.role_names("diagnose", {"policy": "oracle"}) == ["oracle", "lexical_judge"]
    config = copy.deepcopy(prep.config)
    config["evaluation"]["diagnostic_tasks"] = ["lsd", "itr"]
    assert prepare(config, ROOT).role_names("diagnose", {"policy": "oracle"}) == ["oracle"]  # no LAR, no judge
    assert prep.role_names("write_mcqas") == ["mcqa_writer"]


def test_training_job_config_holds_only_its_run_and_roles(default_config):
    config = copy.deepcopy(default_config)
    config["training"]["runs"]["other"] = {"base_model": "somewhere", "per_device_train_batch_size": 4}  # 4 rollouts a step on 1 device
    prep = prepare(config, ROOT)
    job = yaml.safe_load(prep.training_job_config("tiny_vlm_gspo"))
    assert list(job["training"]["runs"]) == ["tiny_vlm_gspo"]
    assert list(job["models"]) == ["lexical_judge"]
    assert prep.training_launcher("tiny_vlm_gspo") == "python"


def test_sharded_layout_and_control_keys(default_config):
    prep = prepared(default_config, sharding={"shard_size": 20, "rules": ["caption", "capeval"], "sizes": {"capeval": 50}})
    assert prep.shard_count("caption") == 4 and prep.shard_count("capeval") == 2  # 64 synthesis ordinals
    assert prep.stage_output("caption", "captions/{condition}/{policy}.parquet") == \
        "results/captions/{condition}/{policy}.shards/{shard}.parquet"
    assert "summary" not in prep.capeval_outputs()
    assert not prepared(default_config).sharded("caption")
    keys = prep.capeval_keys()
    assert keys[0] == ("intact", "oracle/lexical_judge") and len(keys) == 5 * 6 * 2
    assert prep.diagnostic_conditions == ["intact"]  # controls.diagnostics is off in the default
    assert prep.condition_input("intact", "lar") == "results/diagnostics/sets/lar.parquet"
    assert prep.condition_input("text_only", "test") == "results/controls/text_only/test.parquet"


def test_the_test_source_switch_moves_every_test_reader(default_config, tmp_path):
    built = prepared(default_config)
    assert built.test_source == "built" and built.condition_input("intact", "test").endswith("results/splits/test.parquet")
    with pytest.raises(ConfigError, match=r"released_test.meta, released_test.qas_gt, released_test.image_root is not set"):
        prepared(default_config, evaluation__test_source="released")
    paths = {"meta": str(tmp_path / "meta.jsonl"), "qas_gt": str(tmp_path / "QAS_GT_test.json"), "image_root": str(tmp_path)}
    config = copy.deepcopy(default_config)
    config["evaluation"]["test_source"] = "released"
    config["released_test"] = paths
    prep = prepare(config, ROOT)
    released = "results/released_test/test.parquet"
    # Captioning and CapEval-QA read it under intact; every control rewrites it (apply_control's source).
    assert prep.condition_input("intact", "test") == released
    assert prep.condition_input("text_only", "test") == "results/controls/text_only/test.parquet"
    assert prep.released_test_inputs() == {"meta": paths["meta"], "qas_gt": paths["qas_gt"]}
    assert prep.released_test_image_root() == paths["image_root"]
    assert prep.condition_input("intact", "lsd") == "results/diagnostics/sets/lsd.parquet"  # diagnostics unchanged


def test_backend_options_are_checked_at_parse_time(default_config, tmp_path):
    config = copy.deepcopy(default_config)
    config["models"]["tiny_vlm"]["options"] = {"batch_size": 8, "limit_images": 8}
    with pytest.raises(UnknownOptionError, match=r"models.tiny_vlm.options: unknown key\(s\) \['limit_images'\] for backend "
                                          r"'transformers'; known: .*adapter"):
        prepare(config, ROOT)
    not_an_adapter = tmp_path / "merged"
    not_an_adapter.mkdir()
    config["models"]["tiny_vlm"]["options"] = {"adapter": str(not_an_adapter)}
    with pytest.raises(ConfigError, match="models.tiny_vlm.options.adapter: .* has no adapter_config.json"):
        prepare(config, ROOT)
    (not_an_adapter / "adapter_config.json").write_text("{}")
    prepare(config, ROOT)  # a folder with an adapter config, or a hub id, is accepted
    config["models"]["tiny_vlm"]["options"] = {"adapter": "org/some-adapter"}
    prepare(config, ROOT)


def test_the_paper_config_parses(tmp_path):
    from snakemake.utils import validate

    config = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    validate(config, str(ROOT / "config" / "schemas" / "config.schema.yaml"))
    prep = prepare(config, ROOT)
    assert prep.spec("covip_authors").model == "Yeongtak/CoViP-Qwen3-VL-8B-GSPO"
    assert "covip_authors" in config["evaluation"]["policies"]
    assert config["negatives"]["per_positive"] == 2


def test_an_adapter_vllm_cannot_serve_fails_at_parse_time(default_config, tmp_path):
    import json

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8, "modules_to_save": ["lm_head"]}))
    config = copy.deepcopy(default_config)
    config["models"]["served"] = {"backend": "vllm", "model": "base", "options": {"adapter": str(adapter)}}
    with pytest.raises(ConfigError, match=r"models.served.options.adapter: .* trains \['lm_head'\] in full"):
        prepare(config, ROOT)
    config["models"]["served"]["backend"] = "transformers"  # peft applies modules_to_save too
    prepare(config, ROOT)


def test_hub_diagnostic_sets_are_fetched_by_the_download_rule_and_checked_at_parse_time(default_config):
    prep = prepared(default_config, diagnostic_sources={"lsd": "hf://datasets/Yeongtak/lsd", "itr": "sets/itr.parquet"})
    hub = prep.diagnostic_hub_source("lsd")
    assert hub.text == "hf://datasets/Yeongtak/lsd" and hub.repo_type == "dataset"
    assert prep.weights_sources[hub.slug] == hub  # one download_models job fetches it with the weights
    assert prep.diagnostic_source("lsd") == {"weights_set": prep.weights_marker(hub.slug)}
    assert prep.diagnostic_source("itr") == {"source": "sets/itr.parquet"}
    assert "concepts" in prep.diagnostic_source("lar")  # generated
    with pytest.raises(ConfigError, match=r"diagnostic_sources.lar: 'hf://Yeongtak/lar' names a model repository; "
                                          r"a hub dataset is 'hf://datasets/Yeongtak/lar'"):
        prepared(default_config, diagnostic_sources={"lar": "hf://Yeongtak/lar"})
    with pytest.raises(ConfigError, match="diagnostic_sources.lar: 'hf://datasets/lar'"):
        prepared(default_config, diagnostic_sources={"lar": "hf://datasets/lar"})


def test_capeval_one_pass_follows_where_the_judge_runs(default_config):
    # the default's judges are stand-ins loaded in the job: one pass each, over every (condition, policy)
    prep = prepared(default_config)
    assert prep.one_pass_judges() == ["lexical_judge", "ngram_judge"]
    assert [judge for judge in prep.config["evaluation"]["judges"] if not prep.capeval_one_pass(judge)] == []
    tables = prep.capeval_tables()
    assert len(tables) == 5 * 6 and tables[0] == ("intact", "oracle")
    outputs, inputs = prep.one_pass_outputs(), prep.one_pass_inputs()
    assert outputs["answers_0"] == "results/capeval/intact/oracle/{judge}/answers.parquet"
    assert inputs["captions_0"] == "results/captions/intact/oracle.parquet"
    assert inputs["test_text_only"] == "results/controls/text_only/test.parquet"
    assert prep.one_pass_tables()[6] == ["captions_6", "test_text_only", "answers_6", "summary_6"]
    # an API judge runs one job per table; sharded capeval too, unless one pass is asked for
    api = prepared(default_config, models__api_judge={"backend": "openai", "model": "m", "base_url": "http://localhost:1/v1"},
                   evaluation__judges=["api_judge", "lexical_judge"])
    assert [judge for judge in api.config["evaluation"]["judges"] if not api.capeval_one_pass(judge)] == ["api_judge"]
    sharded = {"shard_size": 20, "rules": ["capeval"]}
    assert prepared(default_config, sharding=sharded).one_pass_judges() == []
    assert prepared(default_config, capeval={"one_pass": False}).one_pass_judges() == []
    with pytest.raises(ConfigError, match="capeval.one_pass"):
        prepared(default_config, sharding=sharded, capeval={"one_pass": True})
    # a one-pass job takes capeval's resources unless it has its own
    rules = {"capeval": {"threads": 3, "mem_mb": 4000}}
    assert prepared(default_config, resources={**default_config["resources"], "rules": rules}).threads("capeval_one_pass") == 3
