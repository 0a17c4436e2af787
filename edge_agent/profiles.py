"""Equipment profiles: what each kind of machine's signals mean, how its cycles are counted, which indicators run."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, PrivateAttr, ValidationError, create_model, model_validator

from edge_agent.config_model import ConfigError, Model, Name, describe, loads_toml, read_text
from edge_agent.features.base import Feature
from edge_agent.features.registry import FEATURES

#: The built-in profiles (config/profiles in the sources, package data in a wheel).
BUILTIN_PROFILES_DIR = Path(str(resources.files("edge_agent") / "builtin" / "profiles"))

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


class ProfileBase(Model):
    """One equipment kind: the keys every profile has; `Profile` adds one optional table per feature."""

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
    def _references_exist(self) -> ProfileBase:
        names = {s.name for s in self.signals}
        refs: list[tuple[str, str | None]] = []
        if self.cycle:
            refs.append(("cycle.counter", self.cycle.counter))
        for feature, spec in self.features():
            refs += feature.references(spec)
        refs += [(f"signals.{s.name}.setpoint", s.setpoint) for s in self.signals]
        for where, ref in refs:
            if ref is not None and ref not in names:
                raise ValueError(f"{where} names {ref!r}, which is not among the profile's signals")
        return self

    def signal(self, name: str) -> ProfileSignal | None:
        """The profile's signal of that name, if any."""
        return self._by_name.get(name)

    def features(self) -> list[tuple[Feature[Any, Any], BaseModel]]:
        """(feature, its table) of every feature the profile configures, in registry order."""
        specs = ((f, getattr(self, table, None)) for table, f in FEATURES.items())
        return [(f, spec) for f, spec in specs if spec is not None]


_clash = sorted(set(FEATURES) & set(ProfileBase.model_fields))
if _clash:
    raise RuntimeError(
        f"features/registry.py: feature table {', '.join(_clash)} is a key every profile has already"
    )

if TYPE_CHECKING:
    Profile = ProfileBase
else:
    #: One equipment kind: the common keys and an optional table per registered feature (`[oee]`, ...).
    Profile = create_model(
        "Profile",
        __base__=ProfileBase,
        __module__=__name__,
        __doc__="One equipment kind.",
        **{
            table: (f.spec_model | None, Field(default=None, description=f.about))
            for table, f in FEATURES.items()
        },
    )


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
