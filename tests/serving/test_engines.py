"""The registry of engines: the CLI takes its --engine choices, each engine's flags and their checks from it."""

import argparse

import pytest

from scalable_lm.serving.engines import ENGINES, check_engine, engine_options


def args(engine="local", **given):
    values = {"vllm_url": [], "vllm_python": None, "vllm_arg": [], "vllm_state": None, **given}
    return argparse.Namespace(engine=engine, **values)


def test_the_cli_reads_engines_and_their_flags_from_the_registry(capsys):
    from scalable_lm import cli

    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "{" + ",".join(ENGINES) + "}" in out
    assert all(flag in out for spec in ENGINES.values() for flag, _ in spec.flags)


def test_engine_checks_refuse_in_one_line():
    with pytest.raises(ValueError, match=r"m is a classifier; --engine vllm serves generative models"):
        check_engine(args("vllm", vllm_url=["http://127.0.0.1:9"]), "classifier", "m")
    with pytest.raises(ValueError, match=r"^--vllm-url, --vllm-state need --engine vllm$"):
        check_engine(args(vllm_url=["http://127.0.0.1:9"], vllm_state="s"), "generative", "m")
    with pytest.raises(ValueError, match="no vLLM in /nowhere/python"):
        check_engine(args("vllm", vllm_python="/nowhere/python"), "generative", "m")
    check_engine(args("vllm", vllm_url=["http://127.0.0.1:9"]), "generative", "m")  # engines named: no check
    assert engine_options(args()) == {}
    assert engine_options(args("vllm", vllm_url=["u"]))["vllm_urls"] == ["u"]
