"""The options several commands share say the same thing in each (irae_cli/cli/_common.py declares them once),
and what they say matches the code."""

from __future__ import annotations

import pytest
import typer.main
from typer.testing import CliRunner

from irae_cli.cli import app
from irae_cli.cli._common import DTYPE_POLICY
from irae_cli.inference import DTYPES


def _commands() -> dict:
    """{"restore": {"--device": help, ...}, "benchmark speed": {...}, ...} from the click commands typer builds."""
    found = {}

    def walk(command, path):
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                walk(sub, path + [name])
        else:
            found[" ".join(path)] = {p.opts[0]: p.help for p in command.params if p.opts[0].startswith("--")}
    walk(typer.main.get_command(app), [])
    return found


COMMANDS = _commands()

# Options that mean the same in every command that has them: the help must be word for word the same.
SAME_EVERYWHERE = ["--weights:restore,benchmark quality", "--task:restore,benchmark quality",
                   "--tile:restore,benchmark quality", "--batch-size:restore,benchmark quality",
                   "--seed:degrade,benchmark quality", "--recursive:restore,degrade", "--include:restore,degrade",
                   "--exclude:restore,degrade", "--quiet:restore,degrade",
                   "--noise-protocol:degrade,train,benchmark quality", "--mask:degrade,train,benchmark quality",
                   "--hole-ratio:degrade,train,benchmark quality", "--subsampling:degrade,train",
                   "--device:restore,train", "--device:benchmark quality,benchmark speed,benchmark invertibility",
                   "--dtype:restore,benchmark quality", "--backend:restore,benchmark quality"]


@pytest.mark.parametrize("spec", SAME_EVERYWHERE)
def test_a_shared_option_has_one_help_text(spec):
    option, names = spec.split(":")
    helps = {name: COMMANDS[name][option] for name in names.split(",")}
    assert len(set(helps.values())) == 1, helps


def test_every_device_option_gives_the_same_choices():
    helps = {name: opts["--device"] for name, opts in COMMANDS.items() if "--device" in opts}
    assert set(helps) == {"restore", "train", "benchmark quality", "benchmark speed", "benchmark invertibility"}
    first = {h.split(";")[0].rstrip(".") for h in helps.values()}
    assert first == {"auto, cpu, cuda or cuda:N (auto: the GPU when CUDA is available, else the CPU)"}


@pytest.mark.parametrize("name", ["restore", "train", "benchmark quality", "benchmark speed"])
def test_every_dtype_option_states_the_one_policy_and_the_dtypes_it_takes(name):
    text = COMMANDS[name]["--dtype"]
    assert DTYPE_POLICY in text
    takes = ["auto", "fp32", "bf16"] + (["fp16"] if name != "train" else [])  # training refuses fp16
    assert text.startswith(", ".join(takes[:-1]) + " or " + takes[-1])
    assert set(takes) - {"auto"} <= set(DTYPES)


def test_the_dtype_policy_says_what_pick_dtype_does(monkeypatch):
    import torch

    from irae_cli import environment, inference

    cpu = torch.device("cpu")
    monkeypatch.setattr(environment, "cpu_has_native_bf16", lambda: True)
    assert "for an IRAE on a CPU with native bf16" in DTYPE_POLICY
    assert inference.pick_dtype("auto", cpu, coupling_only=True) == torch.bfloat16
    assert inference.pick_dtype("auto", cpu, coupling_only=False) == torch.float32  # "a CNN runs whole": fp32 here
    with pytest.raises(inference.IraeError):
        inference.pick_dtype("fp16", cpu)  # "(not on the CPU)"


def test_backend_lists_extend_the_shared_text():
    assert COMMANDS["benchmark speed"]["--backend"].startswith(COMMANDS["restore"]["--backend"])
    assert COMMANDS["benchmark speed"]["--dtype"].endswith(DTYPE_POLICY)


def test_weights_options_name_the_same_thing():
    helps = {name: opts["--weights"] for name, opts in COMMANDS.items() if "--weights" in opts and name != "train"}
    assert len(helps) == 4 and all(h.startswith("Shipped weights name or a .safetensors path") for h in helps.values())


@pytest.mark.parametrize("args", [["restore", "--help"], ["train", "--help"], ["degrade", "--help"],
                                  ["benchmark", "quality", "--help"], ["benchmark", "speed", "--help"],
                                  ["benchmark", "invertibility", "--help"], ["export", "--help"]])
def test_help_renders(args):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "--help" in result.output
