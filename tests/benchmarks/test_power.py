"""Reading jtop's power and temperature structures (jetson-stats 4.x and 3.x shapes)."""

from __future__ import annotations

import pytest

from benchmarks.power import PowerMonitor, max_temperature_c, total_power_w


def test_total_power_from_jtop4_dict() -> None:
    power = {
        "rail": {"VDD_IN": {"power": 5100}},
        "tot": {"volt": 5000, "curr": 1400, "power": 7021, "avg": 6900},
    }
    assert total_power_w(power) == pytest.approx(7.021)


def test_total_power_from_jtop3_tuple() -> None:
    assert total_power_w(({"cur": 4500, "avg": 4300}, {})) == pytest.approx(4.5)
    assert total_power_w(None) is None


def test_hottest_online_sensor() -> None:
    temps = {
        "CPU": {"online": True, "temp": 48.5},
        "GPU": {"online": True, "temp": 51.0},
        "tj": {"online": False, "temp": -256},
    }
    assert max_temperature_c(temps) == 51.0
    assert max_temperature_c({"CPU": 40.0, "PMIC": 50.0}) == 50.0
    assert max_temperature_c({}) is None


def test_monitor_without_jetson_stats_is_inert() -> None:
    try:
        import jtop  # noqa: F401
    except ImportError:
        with PowerMonitor() as monitor:
            assert not monitor.available
            assert "jetson-stats" in monitor.reason
            assert monitor.window(0.0, 1.0, 10) is None
    else:
        pytest.skip("jetson-stats is installed: the monitor samples for real")
