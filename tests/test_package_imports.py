"""``import greenq`` loads the core only; the rest of the public API loads on first use."""

import subprocess
import sys

import pytest

import greenq

ON_FIRST_USE = ("greenq.composition", "greenq.data_queue", "greenq.scheduling")


def _modules_after(code):
    done = subprocess.run([sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sorted(sys.modules)))"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_importing_greenq_and_a_broker_leaves_the_optional_parts_and_ctypes_unloaded():
    loaded = _modules_after("import greenq, greenq.worker, greenq.brokers.redis, greenq.brokers.rabbitmq")
    assert "greenq.worker" in loaded  # the probe sees what it imported...
    assert not loaded & {*ON_FIRST_USE, "ctypes"}  # ...and nothing it did not need


def test_every_public_name_resolves_and_loads_its_module():
    loaded = _modules_after("from greenq import periodic, cron, group, pipeline, DataQueue")
    assert set(ON_FIRST_USE) <= loaded
    for name in greenq.__all__:
        assert getattr(greenq, name) is not None, name
    assert set(greenq.__all__) <= set(dir(greenq))
    assert greenq.periodic is greenq.scheduling.periodic and greenq.group is greenq.composition.group


def test_the_optional_parts_are_reachable_as_attributes_without_an_import():
    loaded = _modules_after("import greenq; assert callable(greenq.scheduling.run)")
    assert "greenq.scheduling" in loaded


def test_a_misspelt_name_is_an_attribute_error_that_names_it():
    with pytest.raises(AttributeError, match="module 'greenq' has no attribute 'perodic'"):
        greenq.perodic  # noqa: B018
