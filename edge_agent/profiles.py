"""Equipment profiles: what each kind of machine's signals mean, how its cycles are counted, which indicators run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, model_validator

from edge_agent.config_model import ConfigError, Model, Name, describe, loads_toml, read_text

Indicator = Literal["rolling", "imr", "xbar_r", "xbar_s", "capability", "rules", "ewma", "cusum", "band"]


class ProfileSignal(Model):
    """A semantic signal of an equipment kind; device tags of the same name follow it."""

    name: Name
    """Signal name; a device tag with this name is this signal."""
    unit: str = ""
    """Engineering unit."""
    sampling: Literal["per_cycle", "continuous", "counter", "state"] = "continuous"
    """per_cycle: one value per machine cycle (latched on the cycle trigger); continuous: every poll;
    counter: a monotonic counter (rollover and resets handled); state: an enumeration."""
    indicators: list[Indicator] = Field(default_factory=list)
    """Indicators computed for this signal."""
    lsl: float | None = None
    """Default lower specification limit (a device's `limits` entry for the signal replaces both)."""
    usl: float | None = None
    """Default upper specification limit."""
    valid_min: float | None = None
    """Default `valid_min` of the devices' tags of this signal (a tag giving `valid_min` or `valid_max` replaces both)."""
    valid_max: float | None = None
    """Default `valid_max` of the devices' tags of this signal: readings outside are BAD_SENSOR_FAILURE."""
    band: float | None = None
    """For `band`: allowed deviation from the setpoint signal, in the signal's unit. The alarm arms once
    the signal has been inside the band, at start and after every setpoint change: approaching a
    setpoint (a cold start, a recipe step) raises nothing."""
    setpoint: str | None = None
    """For `band`: the signal holding this one's setpoint."""


class CycleTrigger(Model):
    """How a machine cycle is recognised: a counter that increments once per cycle (or shot)."""

    counter: Name
    """Signal holding the cycle (shot) counter."""
    rollover: int = Field(default=65536, ge=2)
    """Counter modulus: 65536 for a uint16 register, 4294967296 for uint32."""
    nominal_cycle_s: float = Field(gt=0)
    """Nominal cycle time; a gap longer than twice this is a stop."""


class OeeSpec(Model):
    """Inputs of OEE per ISO 22400-2."""

    state: Name
    """Machine state signal."""
    producing_states: list[int] = Field(min_length=1)
    """State values that count as actual production time."""
    production_status: Name | None = None
    """Optional second state signal (an IMM's ProductionStatus): with it, time counts as production
    only while `state` is in `producing_states` and this signal is in `producing_statuses`. A device
    without this tag has its production time unknown (no availability) unless `state` says not producing."""
    producing_statuses: list[int] = Field(default_factory=list)
    """Values of `production_status` that count as production (PRODUCTION = 4 for OPC 40077)."""
    parts_counter: Name
    """Produced quantity counter."""
    good_counter: Name
    """Good quantity counter."""
    ideal_cycle_s: float = Field(gt=0)
    """Ideal cycle time per part (planned run time per item)."""
    period_s: float = Field(default=8 * 3600, gt=0)
    """Length of the OEE period (a shift)."""

    @model_validator(mode="after")
    def _status_pair(self) -> OeeSpec:
        if (self.production_status is None) != (not self.producing_statuses):
            raise ValueError("give `production_status` and `producing_statuses` together")
        return self


class FurnaceSpec(Model):
    """Which signals make a furnace's temperature uniformity and soak monitor."""

    sensors: list[Name] = Field(min_length=1)
    """Zone and load thermocouples."""
    setpoint: Name
    """Temperature setpoint signal."""
    furnace_class: int = Field(default=2, ge=1, le=6)
    """AMS2750 furnace class (1: ±3 °C ... 6: ±28 °C)."""
    soak_policy: Literal["pause", "reset"] = "pause"
    """What an excursion does to the soak timer."""


class MoldSpec(Model):
    """Mould temperature control and maintenance signals."""

    supply: Name
    """Supply (main line) temperature."""
    return_: Name = Field(alias="return")
    """Return line temperature."""
    flow: Name
    """Flow rate in L/min."""
    shot_counter: Name | None = None
    """Mould shot counter for maintenance tracking."""
    maintenance_interval: int = Field(default=100_000, gt=0)
    """Shots between preventive maintenance."""
    max_delta_t: float = Field(default=5.0, gt=0)
    """Largest normal return-minus-supply temperature difference in K; above it, heat removal is poor."""


class Profile(Model):
    """One equipment kind."""

    kind: Name
    """Profile name (the file name without .toml)."""
    description: str
    """What kind of machine this is."""
    measurement: Name
    """InfluxDB measurement of raw values of this kind."""
    signals: list[ProfileSignal] = Field(min_length=1)
    """The semantic signals."""
    cycle: CycleTrigger | None = None
    """Cycle trigger, for machines that work in cycles."""
    oee: OeeSpec | None = None
    """OEE inputs."""
    furnace: FurnaceSpec | None = None
    """Furnace uniformity and soak."""
    mold: MoldSpec | None = None
    """Mould / TCU indicators."""
    baseline_samples: int = Field(default=50, ge=10, le=10_000)
    """Good samples that estimate the control limits (phase I) before monitoring starts."""
    window: int = Field(default=50, ge=2, le=1000)
    """Rolling-window length of mean/sd/min/max, in samples."""
    alarm_delay_s: float = Field(default=5.0, ge=0)
    """A band or limit condition must persist this long to raise (or clear) an alarm."""
    kpi_interval_s: float = Field(default=1.0, gt=0)
    """Indicators of continuous signals are published at most this often; per-cycle ones every cycle."""

    # a device looks up each of its tags here: a scan of the list per tag is quadratic in the tag count
    _by_name: dict[str, ProfileSignal] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any, /) -> None:
        """Index the signals by name."""
        self._by_name = {s.name: s for s in self.signals}

    @model_validator(mode="after")
    def _references_exist(self) -> Profile:
        names = {s.name for s in self.signals}
        refs: list[tuple[str, str | None]] = []
        if self.cycle:
            refs.append(("cycle.counter", self.cycle.counter))
        if self.oee:
            refs += [("oee.state", self.oee.state), ("oee.parts_counter", self.oee.parts_counter)]
            refs.append(("oee.good_counter", self.oee.good_counter))
            refs.append(("oee.production_status", self.oee.production_status))
        if self.furnace:
            refs += [(f"furnace.sensors[{i}]", s) for i, s in enumerate(self.furnace.sensors)]
            refs.append(("furnace.setpoint", self.furnace.setpoint))
        if self.mold:
            refs += [("mold.supply", self.mold.supply), ("mold.return", self.mold.return_)]
            refs += [("mold.flow", self.mold.flow), ("mold.shot_counter", self.mold.shot_counter)]
        refs += [(f"signals.{s.name}.setpoint", s.setpoint) for s in self.signals]
        for where, ref in refs:
            if ref is not None and ref not in names:
                raise ValueError(f"{where} names {ref!r}, which is not among the profile's signals")
        return self

    def signal(self, name: str) -> ProfileSignal | None:
        """The profile's signal of that name, if any."""
        return self._by_name.get(name)


def load_profile(path: Path) -> Profile:
    """Read and validate one profile file; raises ConfigError naming the file and the place in it."""
    data = loads_toml(read_text(path), str(path))
    data.setdefault("kind", path.stem)
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(str(path), [describe(e, data, Profile) for e in exc.errors()]) from None


def find_profile(name: str, dirs: list[Path]) -> Profile:
    """Load the first profile called `name` from the given folders."""
    for folder in dirs:
        path = folder / f"{name}.toml"
        if path.is_file():
            return load_profile(path)
    raise ConfigError(name, [f"no profile {name!r} in {', '.join(str(d) for d in dirs)}"])
