"""The contracts' ABIs the services read are shipped in the package (``avs/chain/abis``): an
installed copy (the operator's container image) has no forge build output. They must be what
forge builds from the contracts now (``make abis`` writes them)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from avs.chain.abi import DEFAULT_OUT_DIR, PACKAGED_ABIS, load_abi, render_abi
from avs.devnet import build_contracts
from avs.errors import InvalidInputError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("contract", PACKAGED_ABIS)
def test_the_packaged_abi_is_the_built_one(contract: str) -> None:
    build_contracts()
    built = render_abi(load_abi(contract, DEFAULT_OUT_DIR))
    assert render_abi(load_abi(contract)) == built, f"avs/chain/abis/{contract}.json is stale: run `make abis`"


def test_an_unknown_contract_is_a_clear_error() -> None:
    with pytest.raises(InvalidInputError, match="no packaged ABI for Nope"):
        load_abi("Nope")


def test_an_installed_wheel_reads_its_abis_without_the_repository(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    had_build_folder = (ROOT / "build").exists()
    try:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "-q",
                "--no-deps",
                "--no-build-isolation",
                "-w",
                str(wheels),
                str(ROOT),
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
    finally:  # setuptools builds in the tree
        if not had_build_folder:
            shutil.rmtree(ROOT / "build", ignore_errors=True)
    (wheel,) = wheels.glob("*.whl")
    installed = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(installed)
    probe = (
        "import avs.chain.abi as m; from avs.chain.client import _ERROR_SOURCES;"
        f"assert m.__file__.startswith({str(installed)!r}), m.__file__;"
        "[m.load_abi(n) for n in (*m.PACKAGED_ABIS, *_ERROR_SOURCES)]; print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.strip() == "ok", result.stderr
