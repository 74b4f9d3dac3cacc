"""Short errors: the project's own message and what to do, not a traceback or a config dump."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from lightning_fabric.utilities.exceptions import MisconfigurationException
from processes import run_together

from l2bn_lit import create_norm
from l2bn_lit.errors import user_error_message
from l2bn_lit.serialization import CheckpointError, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")


def _raised(function) -> BaseException:
    try:
        function()
    except BaseException as error:  # noqa: BLE001
        return error
    raise AssertionError("nothing was raised")


def test_project_errors_give_their_message_and_others_keep_their_traceback(tmp_path):
    assert (
        user_error_message(_raised(lambda: create_norm("l2bnx", 4)))
        == "unknown norm 'l2bnx'; choose one of bn, l2bn, gn, ln, none"
    )
    assert (
        user_error_message(_raised(lambda: torch.zeros(2) @ torch.zeros(3))) is None
    )  # torch's: a bug, keep the traceback
    assert user_error_message(MisconfigurationException("bad trainer option")) == "bad trainer option"

    def wrapped():  # a parser wraps the project's error in its own, as jsonargparse does
        try:
            create_norm("l2bnx", 4)
        except ValueError as inner:
            raise ValueError(
                "Does not validate against any of the Union subtypes ... Given value: Namespace(...)"
            ) from inner

    assert user_error_message(_raised(wrapped)).startswith("unknown norm 'l2bnx'")
    error = _raised(lambda: load_checkpoint(tmp_path / "missing.ckpt"))  # raised "from None": its own message
    assert (
        isinstance(error, CheckpointError)
        and user_error_message(error) == f"{tmp_path / 'missing.ckpt'}: no such checkpoint file"
    )


def _commands(*commands: tuple[str, ...]) -> list[subprocess.CompletedProcess]:
    """``python ARGS...`` for each tuple of arguments, run at once in the repository, without L2BN_DEBUG."""
    env = {k: v for k, v in os.environ.items() if k != "L2BN_DEBUG"}
    return run_together(*([sys.executable, *args] for args in commands), cwd=ROOT, env=env, timeout=180)


def _short(result: subprocess.CompletedProcess, status: int, message: str) -> None:
    assert result.returncode == status, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Namespace(" not in result.stderr
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-3000:]
    assert errors[0] in lines[-4:] and len(lines) <= 12, result.stderr  # the error ends the output, with what to do


def test_cli_unknown_name_is_a_short_error_and_debug_shows_the_traceback():
    args = ("cli.py", "fit", "--config", QUICKSTART, "--model.init_args.norm", "l2bnx")
    short, debug = _commands(args, (*args, "--debug"))
    _short(short, 1, "unknown norm 'l2bnx'; choose one of bn, l2bn, gn, ln, none")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "unknown norm 'l2bnx'" in debug.stderr


def test_cli_option_mistake_and_missing_data_are_short(tmp_path):
    option, missing = _commands(
        ("cli.py", "fit", "--config", QUICKSTART, "--model.init_args.lrr", "3"),
        (
            "cli.py",
            "fit",
            "--config",
            str(ROOT / "configs" / "cifar10_resnet20.yaml"),
            "--data.init_args.root",
            str(tmp_path / "nowhere"),
            "--trainer.max_epochs",
            "1",
            "--trainer.default_root_dir",
            str(tmp_path / "runs"),
        ),  # the run folder, not the repository's runs/
    )
    _short(option, 2, 'Parser key "model"')
    assert (
        "Option 'lrr' is not accepted" in option.stderr and "--trainer.accelerator" not in option.stderr
    )  # no usage dump
    _short(missing, 1, "CIFAR-10 was not found")


def test_tools_name_the_bad_file(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x00" * 64)
    evaluate, test, results = _commands(
        ("-m", "l2bn_lit", "evaluate", "--config", QUICKSTART, str(bad), "--out", str(tmp_path / "out")),
        ("cli.py", "test", "--config", QUICKSTART, "--ckpt_path", str(bad)),
        ("-m", "l2bn_lit", "results", str(tmp_path / "empty")),
    )
    _short(evaluate, 1, f"{bad}: ")
    _short(test, 1, f"{bad}: not a PyTorch checkpoint")
    _short(results, 1, "no runs (config.yaml + metrics.csv)")


def test_a_missing_data_set_names_the_command_that_gets_it(tmp_path):
    (missing,) = _commands(
        (
            "cli.py",
            "fit",
            "--config",
            str(ROOT / "configs" / "dcase2024_task1_cpmobile.yaml"),
            "--data.init_args.root",
            str(tmp_path / "tau"),
        )
    )
    _short(missing, 1, "split_setup/split25.csv does not exist")
    assert (
        f"get it with: l2bn data download tau2022-mobile-dev --root {tmp_path / 'tau'} and "
        f"l2bn data download dcase2024-task1-splits --root {tmp_path / 'tau'}"
    ) in missing.stderr
