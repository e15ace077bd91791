"""A federation deployed as processes: ``securefl aggregator --config FED.toml`` and ``securefl party
--config PARTY.toml --train module:function``.

FED.toml is the federation's agreement, a copy held by the aggregator and by every party::

    rounds = 5
    model = "hospital:initial_model"   # module:function → the initial global model (aggregator)
    weighting = "examples"             # or "uniform"
    weight_bound = 300
    min_parties = 2
    phase_timeout = 60.0
    privacy = "secagg"                 # a preset, or [[privacy]] tables as in `securefl run`

    [network]
    address = "127.0.0.1:50051"
    parties = ["hospital-a", "hospital-b", "hospital-c"]   # the allowlist
    connect_timeout = 60.0             # how long round 0 waits for min_parties to connect
    reconnect_grace = 5.0              # how long a phase waits for a broken stream to come back
    max_message_mb = 256
    hello_timeout = 30.0               # TLS handshake, then the hello, each within this
    max_connections = 76               # at once; default 64 + 4 per party (protocols/network.md)

    [tls]                              # the aggregator's files (securefl keys tls writes them)
    ca = "certs/ca.pem"
    cert = "certs/aggregator.pem"
    key = "certs/private/aggregator.key"
    party_certs = "certs/parties"      # pins each party's certificate and its SecAgg identity

PARTY.toml is one party's::

    federation = "fed.toml"
    party = "hospital-a"
    [tls]
    ca = "certs/ca.pem"
    cert = "certs/parties/hospital-a.pem"
    key = "certs/private/hospital-a.key"
    identity = "certs/private/hospital-a.identity.key"
    [train]                            # handed to the train factory as a dict
    data_seed = 0

The train factory ``module:function`` is called once with the ``[train]`` table (plus ``party``) and
returns a :class:`~securefl.party.Client` or a train function. Paths are relative to the TOML file.
Both sides hash the settings that define the protocol (the *agreement*); a party holding different
ones is refused before any round.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from securefl.aggregator import Aggregator, RoundReport
from securefl.codec import ArraySpec, HonestBounds, VectorLayout
from securefl.config import budget_settings, no_unknown, read_toml, typed_value
from securefl.crypto.certificates import (
    check_tls_pair,
    load_identity,
    read_public_file,
    verify_party_certificate,
)
from securefl.crypto.keyfiles import read_private
from securefl.crypto.signing import Identities
from securefl.deadlines import check_deadline
from securefl.errors import ConfigError, SecureFLError
from securefl.federation import build_stack, party_strategy, party_weight_bound, validate_stack
from securefl.fusion import build_strategy
from securefl.layers import DPNoise, PrivacyStack
from securefl.layers.paillier_threshold import PaillierThreshold
from securefl.layers.secagg import SecAgg
from securefl.layers.shared_key import SharedKeySum
from securefl.logtext import printable
from securefl.network.round_log import RoundLog
from securefl.network.server import TLSFiles
from securefl.party import Client, PartyNode
from securefl.selection import build_selection
from securefl.tasks import load_callable

log = logging.getLogger(__name__)

_FED = {
    "rounds",
    "model",
    "weighting",
    "weight_bound",
    "min_parties",
    "phase_timeout",
    "selection",
    "privacy",
    "strategy",
    "train_metrics",
    "eval_metrics",
    "metric_bounds",
    "budget",
    "network",
    "tls",
}
_NETWORK = {
    "address",
    "parties",
    "connect_timeout",
    "reconnect_grace",
    "max_message_mb",
    "hello_timeout",
    "max_connections",
}
_TLS_AGG = {"ca", "cert", "key", "party_certs"}
_PARTY = {"federation", "party", "aggregator", "tls", "train"}
_TLS_PARTY = {"ca", "cert", "key", "identity", "server_name"}


def _read_toml(path: str | Path) -> tuple[dict[str, Any], Path]:
    """The file's table and its directory (paths inside are relative to it)."""
    return read_toml(path), Path(path).resolve().parent


def _table(data: dict, key: str, known: set[str] | None, where: str, required: bool = True) -> dict[str, Any]:
    """``data[key]`` as a table with only ``known`` keys (any keys if None)."""
    value = data.get(key, {} if not required else None)
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{key}] must be a table")
    if known is not None:
        no_unknown(value, known, f"{where} [{key}]")
    return value


def _tls_files(base: Path, table: dict, where: str, server: bool) -> TLSFiles:
    """The CA and certificate (regular files only: a FIFO hung the aggregator, found by an
    attacker), and the private key held to a secret file's rules (not readable by others, not
    through a symlink: a TLS key others could read is a leaked key). The key must be the
    certificate's, and the certificate this side's kind (found by an attacker: a party's key or
    certificate given to the aggregator surfaced as "cannot listen ... failed to bind", and a party
    with another's key waited out its connect timeout saying only "no connection")."""
    ca, cert = (read_public_file(_file(base, table, k, where), f"{where}: {k}") for k in ("ca", "cert"))
    key = read_private(_file(base, table, "key", where), "TLS private key")
    check_tls_pair(cert, key, ca, server, f"{where}: cert = {table['cert']!r}, key = {table['key']!r}")
    return TLSFiles(ca, cert, key)


def _file(base: Path, table: dict, key: str, where: str) -> Path:
    if not isinstance(table.get(key), str):
        raise ConfigError(f"{where}: {key} must be a path")
    path = base / table[key]
    if not path.exists():
        raise ConfigError(f"{where}: {key} = {table[key]!r} does not exist (securefl keys tls creates it)")
    return path


def _number(table: dict, key: str, default: float, where: str, most: float = math.inf) -> float:
    """A positive, finite number of the config (found by an attacker: connect_timeout = nan hung the
    aggregator for ever; inf, negative and text values were taken or failed deep inside)."""
    value = typed_value(table, key, (int, float), default, where)
    if not (0 < value < math.inf) or value > most:
        limit = f" and at most {most:g}" if most < math.inf else ""
        raise ConfigError(f"{where}: {key} = {value!r} must be a positive finite number{limit}")
    return float(value)


def _whole(table: dict, key: str, default: int, where: str) -> int:
    value = typed_value(table, key, int, default, where)
    if value < 1:
        raise ConfigError(f"{where}: {key} = {value!r} must be a whole number ≥ 1")
    return value


def _text(table: dict, key: str, default: str | None, where: str) -> str | None:
    value = table.get(key, default)
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"{where}: {key} must be text, got {value!r}")
    return value


def _check_network(network: dict, where: str) -> None:
    """Every [network] value, checked when the file is read (not when first used, mid-run)."""
    for key, default in (("connect_timeout", 60.0), ("reconnect_grace", 5.0), ("hello_timeout", 30.0)):
        _deadline(network, key, default, f"{where} [network]")
    # gRPC counts a message's bytes in a signed 32-bit integer: 2 GiB − 1 at most
    _number(network, "max_message_mb", 256, f"{where} [network]", most=2047)
    _text(network, "address", "127.0.0.1:50051", f"{where} [network]")
    if network.get("max_connections") is not None:
        _whole(network, "max_connections", 1, f"{where} [network]")


def _deadline(table: dict, key: str, default: float, where: str) -> float:
    """A time limit of the config: the one rule every deadline follows (``deadlines.check_deadline``)."""
    return check_deadline(typed_value(table, key, (int, float), default, where), f"{where}: {key}")


@dataclass
class FederationConfig:
    """The agreement of FED.toml and what follows from it."""

    source: str
    base: Path
    rounds: int
    parties: list[str]
    privacy: Any
    weighting: str
    weight_bound: float | None
    min_parties: int
    phase_timeout: float
    selection: Any
    strategy: Any
    train_metrics: tuple[str, ...]
    eval_metrics: tuple[str, ...]
    metric_bounds: dict[str, float]
    budget: dict[str, Any] | None
    network: dict[str, Any]
    tls: dict[str, Any]
    model: str | None = None
    agreement: str = field(init=False)

    def __post_init__(self) -> None:
        from securefl import __version__  # (here: the package has finished importing by now)

        terms = {
            # The release: its protocols (SecAgg's Shamir coordinates, say) change between releases,
            # and two releases in one federation fail mid-round or name honest parties.
            "securefl": __version__,
            "rounds": self.rounds,
            "parties": self.parties,
            "privacy": self.privacy,
            "weighting": self.weighting,
            "weight_bound": self.weight_bound,
            "min_parties": self.min_parties,
            "selection": self.selection,
            "strategy": self.strategy,
            "train_metrics": list(self.train_metrics),
            "eval_metrics": list(self.eval_metrics),
            "metric_bounds": self.metric_bounds,
            "budget": {k: v for k, v in (self.budget or {}).items() if k != "ledger"},
        }
        canonical = json.dumps(terms, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        self.agreement = hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def address(self) -> str:
        return self.network.get("address", "127.0.0.1:50051")

    @property
    def max_message_bytes(self) -> int:
        return int(float(self.network.get("max_message_mb", 256)) * (1 << 20))

    @property
    def party_weight_bound(self) -> float | None:
        return party_weight_bound(self.weighting, self.weight_bound)

    def stack_for(self, size: int, identities: Identities | None) -> tuple[PrivacyStack, VectorLayout]:
        """The validated stack for a model of ``size`` values, SecAgg identities bound if given."""
        layout = VectorLayout(size, self.train_metrics, self.eval_metrics)
        stack = build_stack(self.privacy)
        if isinstance(stack.secure_sum, (SecAgg, SharedKeySum)) and identities is not None:
            # Active mode: SecAgg's key advertisements and the HE layers' key distribution signed
            # with the identities the party certificates carry.
            stack.secure_sum.identities = identities
        if isinstance(stack.secure_sum, PaillierThreshold):
            # Key shares are bound to the certificates' party ids: each allowlisted party holds the
            # share named after it (a party refuses a share file naming anyone else).
            stack.secure_sum.require_holders(self.parties)
        validate_stack(
            stack,
            layout,
            build_selection(self.selection),
            len(self.parties),
            self.min_parties,
            self.party_weight_bound,
            self.metric_bounds,
        )
        return stack, layout

    def identities(
        self, own: tuple[str, Any] | None = None
    ) -> tuple[Identities | None, dict[str, str | None]]:
        """The parties' protocol identities and certificate fingerprints from ``tls.party_certs``
        (every certificate verified against the CA); without it, no pinning and passive SecAgg."""
        directory = self.tls.get("party_certs")
        if directory is None:
            return None, dict.fromkeys(self.parties)
        ca = _file(self.base, self.tls, "ca", self.source).read_bytes()
        public, pins = {}, {}
        for party in self.parties:
            path = self.base / directory / f"{party}.pem"
            if not path.exists():
                raise ConfigError(f"{self.source}: no certificate {path} for allowlisted party {party!r}")
            cert = verify_party_certificate(path.read_bytes(), ca)
            if cert.party != party:
                raise ConfigError(f"{path} names {cert.party!r}, not {party!r}")
            public[party], pins[party] = cert.identity, cert.fingerprint
        private = {own[0]: own[1]} if own else {}
        return Identities(public, private), pins


def load_federation(path: str | Path) -> FederationConfig:
    data, base = _read_toml(path)
    source = str(path)
    no_unknown(data, _FED, source)
    network = _table(data, "network", _NETWORK, source)
    parties = network.get("parties")
    if not (isinstance(parties, list) and parties and all(isinstance(p, str) for p in parties)):
        raise ConfigError(f"{source}: [network] parties must list the allowlisted party ids")
    if len(set(parties)) != len(parties):
        raise ConfigError(f"{source}: [network] parties lists a party twice")
    rounds = data.get("rounds", 10)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"{source}: rounds must be a positive integer, got {rounds!r}")
    if data.get("weighting", "examples") not in ("examples", "uniform"):
        raise ConfigError(f"{source}: weighting must be 'examples' or 'uniform', got {data['weighting']!r}")
    privacy = data.get("privacy", "plain")
    _check_network(network, source)
    weight_bound = data.get("weight_bound")
    if weight_bound is not None:
        weight_bound = _number(data, "weight_bound", 1.0, source)
    metric_bounds = _table(data, "metric_bounds", None, source, required=False)
    for name in metric_bounds:
        _number(metric_bounds, name, 1.0, f"{source} [metric_bounds]")
    for key in ("train_metrics", "eval_metrics"):
        names = data.get(key, [])
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise ConfigError(f"{source}: {key} must list metric names, got {names!r}")
    if "budget" in data:
        budget_settings(data["budget"], privacy, source)  # checked here, used by the aggregator
    return FederationConfig(
        source=source,
        base=base,
        rounds=rounds,
        parties=list(parties),
        privacy=privacy,
        weighting=data.get("weighting", "examples"),
        weight_bound=weight_bound,
        min_parties=_whole(data, "min_parties", 1, source),  # 2.7 was read as 2
        phase_timeout=_deadline(data, "phase_timeout", 600.0, source),
        selection=data.get("selection", "all"),
        strategy=data.get("strategy", "fedavg"),
        train_metrics=tuple(data.get("train_metrics", ())),
        eval_metrics=tuple(data.get("eval_metrics", ())),
        metric_bounds=dict(metric_bounds),
        budget=data.get("budget"),
        network=network,
        tls=_table(data, "tls", _TLS_AGG, source),
        model=data.get("model"),
    )


# -- the aggregator ----------------------------------------------------------------------------


def run_aggregator(config: str | Path, on_round: Callable[..., None] | None = None) -> dict[str, Any]:
    """Serve the federation of ``config`` for its rounds; return a summary."""
    from securefl.network.server import GrpcServerTransport
    from securefl.privacy.guard import guard_for
    from securefl.runner import BudgetSettings

    fed = load_federation(config)
    if not isinstance(fed.model, str):
        raise ConfigError(f"{fed.source}: model = 'module:function' (the initial global model) is required")
    model = _call(load_callable(fed.model, "model"), f"model {fed.model!r}")
    spec = ArraySpec.of(model)
    identities, pins = fed.identities()
    stack, layout = fed.stack_for(spec.size, identities.public_only() if identities else None)
    guard = None
    if any(isinstance(t, DPNoise) for t in stack.transforms):
        settings = budget_settings(fed.budget, fed.privacy, fed.source) if fed.budget else BudgetSettings()
        if settings.ledger:
            settings.ledger = str(fed.base / settings.ledger)  # relative to FED.toml, like every path
        guard = guard_for(settings)
    tls = _tls_files(fed.base, fed.tls, fed.source, server=True)
    session = secrets.token_hex(16)
    transport = GrpcServerTransport(
        fed.address,
        tls,
        pins,
        session,
        spec.to_json(),
        fed.agreement,
        max_message_bytes=fed.max_message_bytes,
        reconnect_grace=float(fed.network.get("reconnect_grace", 5.0)),
        hello_timeout=float(fed.network.get("hello_timeout", 30.0)),
        max_connections=fed.network.get("max_connections"),
    )
    selection = build_selection(fed.selection)
    strategy = build_strategy(fed.strategy)
    party_strategy(stack, strategy)  # a server optimizer with a layer that fuses on the parties: refused
    if guard is not None:
        guard.bind(stack, selection, len(fed.parties))
    aggregator = Aggregator(
        spec,
        spec.flatten(model),
        layout,
        stack,
        transport,
        fed.parties,
        session,
        selection,
        strategy,
        min_parties=fed.min_parties,
        phase_timeout=fed.phase_timeout,
        guard=guard,
        honest=HonestBounds.of(fed.weighting, fed.party_weight_bound, fed.metric_bounds),
    )
    log.info(
        "aggregator listening on %s (port %d) for %s", fed.address, transport.port, ", ".join(fed.parties)
    )
    try:
        present = transport.wait_for(len(fed.parties), float(fed.network.get("connect_timeout", 60.0)))
        log.info("parties connected before round 0: %s", ", ".join(present) or "none")
        reports = []
        for round in range(fed.rounds):
            report = _guarded_round(aggregator, round)
            reports.append(report)
            _log_round(report)
            if on_round is not None:
                on_round(report)
            if report.status == "refused":
                break
    finally:
        transport.close()
    return {
        "rounds": fed.rounds,
        "rounds_ok": sum(r.ok for r in reports),
        "rounds_failed": sum(r.status == "failed" for r in reports),
        "failures": {r.number: r.error for r in reports if r.status == "failed"},
        "refused": next((r.error for r in reports if r.status == "refused"), None),
        "parties_seen": sorted(transport.seen),
        "dropouts": {r.number: r.dropouts for r in reports if r.dropouts},
        "sidelined": {r.number: r.sidelined for r in reports if r.sidelined},
        "epsilon": next((r.epsilon for r in reversed(reports) if r.epsilon is not None), None),
        "sealed": aggregator.sealed is not None,
        "weights": None if aggregator.sealed is not None else spec.unflatten(aggregator.weights),
        "bytes_up": sum(r.bytes_up for r in reports),
        "bytes_down": sum(r.bytes_down for r in reports),
    }


def _call(function: Callable, what: str, *args: Any) -> Any:
    """A user function the deployment names (the model, the train factory): its failure is a
    configuration error with a clear message, not a traceback."""
    try:
        return function(*args)
    except SecureFLError:
        raise
    except Exception as exc:
        raise ConfigError(f"{what} failed: {type(exc).__name__}: {exc}") from exc


def _guarded_round(aggregator: Aggregator, round: int) -> RoundReport:
    """One round; whatever escapes it (a layer's error on a party's bytes, a bug) becomes a failed
    round in the log, never the end of the process: the other parties go on to the next round."""
    try:
        return aggregator.run_round(round)
    except Exception as exc:
        log.debug("round %d raised", round + 1, exc_info=True)
        return RoundReport(
            round,
            "failed",
            [],
            error=f"{type(exc).__name__} escaped the round: {exc}; its result is discarded and the "
            "global model is unchanged",
        )


def _log_round(report) -> None:
    # Reasons and errors may quote what a party sent: escaped, one line each (printable).
    if report.status == "refused":
        log.warning(
            "round %d refused by the privacy budget: %s",
            report.number,
            printable(report.error),
        )
        return
    epsilon = f", ε {report.epsilon:.4g}" if report.epsilon is not None else ""
    dropouts = "; ".join(f"{p} ({printable(why)})" for p, why in report.dropouts.items()) or "none"
    log.info(
        "round %d %s: %d selected, %d summed, dropouts: %s%s (%.2fs, %d B up)",
        report.number,
        report.status,
        len(report.selected),
        len(report.survivors),
        dropouts,
        epsilon,
        report.seconds,
        report.bytes_up,
    )
    if report.error:
        log.warning("round %d failed: %s", report.number, printable(report.error))


# -- a party -----------------------------------------------------------------------------------


@dataclass
class PartyConfig:
    federation: FederationConfig
    party: str
    aggregator: str
    tls: TLSFiles
    identity_path: Path | None
    server_name: str | None
    train: dict[str, Any]
    # The rounds this party has taken part in (securefl.network.round_log), beside its TLS key.
    round_log_path: Path | None = None


def load_party(path: str | Path) -> PartyConfig:
    data, base = _read_toml(path)
    source = str(path)
    no_unknown(data, _PARTY, source)
    if not isinstance(data.get("federation"), str) or not isinstance(data.get("party"), str):
        raise ConfigError(
            f"{source}: federation (the FED.toml path) and party (this party's id) are required"
        )
    fed = load_federation(base / data["federation"])
    party = data["party"]
    if party not in fed.parties:
        raise ConfigError(f"{source}: party {party!r} is not in the federation's allowlist {fed.parties}")
    tls_table = _table(data, "tls", _TLS_PARTY, source)
    tls = _tls_files(base, tls_table, source, server=False)
    identity = _file(base, tls_table, "identity", source) if "identity" in tls_table else None
    train = _table(data, "train", None, source, False)
    return PartyConfig(
        fed,
        party,
        _text(data, "aggregator", fed.address, source),
        tls,
        identity,
        _text(tls_table, "server_name", None, f"{source} [tls]"),
        {**train, "party": party},
        Path(str(_file(base, tls_table, "key", source)) + ".rounds"),
    )


def run_party_process(config: str | Path, train: str) -> dict[str, Any]:
    """Join the federation of ``config`` as its party, training with the factory ``train``."""
    from securefl.network.client import run_party

    cfg = load_party(config)
    fed = cfg.federation
    summary = run_party(
        cfg.party,
        cfg.aggregator,
        cfg.tls,
        fed.agreement,
        party_node_factory(cfg, train),
        max_message_bytes=fed.max_message_bytes,
        connect_timeout=float(fed.network.get("connect_timeout", 60.0)),
        server_name=cfg.server_name,
    )
    return {"party": cfg.party, "requests": summary.requests, "reconnects": summary.reconnects}


def party_node_factory(cfg: PartyConfig, train: str) -> Callable[[str, ArraySpec], PartyNode]:
    """Checks this party's certificate and identity key, loads the train factory ``train``, and
    returns what builds its :class:`PartyNode` once the aggregator's welcome names the session."""
    fed = cfg.federation
    produced = _call(load_callable(train, "--train"), f"--train {train!r}", cfg.train)
    client = produced if isinstance(produced, Client) else Client(train=produced)
    if not callable(client.train):
        raise ConfigError(f"--train {train!r} must return a securefl.Client or a train function")
    own_cert = verify_party_certificate(cfg.tls.cert, cfg.tls.ca)
    if own_cert.party != cfg.party:
        raise ConfigError(f"this party's certificate names {own_cert.party!r}, the config {cfg.party!r}")
    own_identity = None
    if cfg.identity_path is not None:
        own_identity = load_identity(cfg.identity_path)
        if own_identity.public_key().public_bytes_raw() != own_cert.identity:
            raise ConfigError(
                f"{cfg.identity_path} is not the identity key this party's certificate certifies"
            )
    identities = None
    if fed.tls.get("party_certs") is not None:
        if own_identity is None:
            raise ConfigError(
                "the federation pins party certificates: [tls] identity (the Ed25519 key) is needed"
            )
        identities, _ = fed.identities((cfg.party, own_identity))
    strategy = build_strategy(fed.strategy)
    round_log = (
        RoundLog(cfg.round_log_path, agreement=fed.agreement, rounds=fed.rounds)
        if cfg.round_log_path is not None
        else None
    )

    def node(session: str, spec: ArraySpec) -> PartyNode:
        stack, layout = fed.stack_for(spec.size, identities)
        return PartyNode(
            cfg.party,
            client,
            spec,
            layout,
            stack,
            session,
            weighting=fed.weighting,
            weight_bound=fed.party_weight_bound,
            max_request_bytes=fed.max_message_bytes,
            strategy=party_strategy(stack, strategy),
            min_parties=fed.min_parties,
            honest=HonestBounds.of(fed.weighting, fed.party_weight_bound, fed.metric_bounds),
            round_log=round_log,
        )

    return node
