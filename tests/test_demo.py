from __future__ import annotations

import pytest

from avs import demo


def test_demo_certifies_and_rejects_tampering(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main() == 0
    out = capsys.readouterr().out
    assert "not built yet" in out  # the demo says what it is not
    assert "VALID" in out and "CERTIFIED" in out
    assert out.count("rejected, as it must be") == 2
