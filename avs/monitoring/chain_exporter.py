"""The AVS's on-chain economics as Prometheus metrics: stake, operators, coverage, slashing, batches.

Nothing off-chain knows these numbers for sure, so this exporter reads them from the contracts
(ABIs from forge's build output, through ``avs.chain``). It polls: each poll reads the current
state at the latest block and scans the events since the last poll (from the deployment's start
block on first start), then every scrape serves the last snapshot, so a scrape never waits for
the chain. Events of the last ``--reorg-depth`` blocks are read again on every poll, so an event
a reorg within that depth moved to another block is counted once; the counters never go down (an
event a reorg removed for good stays counted); older events are counted once.

Run ``python -m avs.monitoring.chain_exporter --rpc-url URL --deployment FILE --listen HOST:PORT``;
it prints ``{"event": "ready", ...}`` on stdout once serving. Amounts are in whole tokens (the
stake token's base units / 10**decimals); slashed amounts are strategy shares on the same scale
(1:1 with tokens in the local restaking core).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import FrameType
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from web3 import Web3

from avs.chain.abi import load_abi
from avs.chain.deployment import Deployment, load_deployment
from avs.config import RPC_URL_ENV, default_rpc_url
from avs.errors import InvalidInputError
from avs.httpserver import start_metrics_server
from avs.logs import redact_urls

logger = logging.getLogger(__name__)

DEFAULT_LISTEN = "0.0.0.0:9098"
DEFAULT_POLL_SECONDS = 5.0
LOG_CHUNK_BLOCKS = 5_000  # eth_getLogs range per request (public RPCs cap it)
DEFAULT_REORG_DEPTH = 64  # blocks: about two epochs, when Ethereum mainnet finalizes


@dataclass(frozen=True, slots=True)
class QuorumState:
    quorum: int
    stake: int  # current total (slashable) stake, base units
    operators: int
    coverage_outstanding: int  # base units; 0 without an insurance pool
    coverage_available: int


@dataclass(frozen=True, slots=True)
class PoolState:
    balance: int  # the pool's stake-token balance, base units
    free_balance: int
    total_claimable: int
    total_owed: int = 0  # payouts and rewards owed and not funded yet (``totalOwed``)


@dataclass(frozen=True, slots=True)
class EventTotals:
    """Sums over the events of a block range (base units); ``add`` joins consecutive ranges."""

    batches_certified: int = 0
    last_batch_block: int | None = None
    slashings: Mapping[int, int] = field(default_factory=dict)  # quorum -> OperatorSlashed events
    slashed_shares: Mapping[int, int] = field(default_factory=dict)  # quorum -> shares
    coverage_bought: int = 0
    premiums: int = 0
    claims_paid: int = 0
    challenges_opened: int = 0
    ejections: Mapping[int, int] = field(default_factory=dict)  # quorum -> OperatorEjected events
    churns: Mapping[int, int] = field(default_factory=dict)  # quorum -> OperatorChurned events

    def add(self, later: EventTotals) -> EventTotals:
        return EventTotals(
            batches_certified=self.batches_certified + later.batches_certified,
            last_batch_block=later.last_batch_block if later.last_batch_block is not None else self.last_batch_block,
            slashings=compute_sum_by_key(self.slashings, later.slashings),
            slashed_shares=compute_sum_by_key(self.slashed_shares, later.slashed_shares),
            coverage_bought=self.coverage_bought + later.coverage_bought,
            premiums=self.premiums + later.premiums,
            claims_paid=self.claims_paid + later.claims_paid,
            challenges_opened=self.challenges_opened + later.challenges_opened,
            ejections=compute_sum_by_key(self.ejections, later.ejections),
            churns=compute_sum_by_key(self.churns, later.churns),
        )

    def at_least(self, served: EventTotals) -> EventTotals:
        """These totals, no count below ``served``'s: Prometheus takes a counter that goes down for a
        reset and adds its whole value to ``increase()``, so a reorg's lost event stays counted (an
        event re-mined in another block is then counted once)."""
        return replace(
            self,
            batches_certified=max(self.batches_certified, served.batches_certified),
            slashings=compute_max_by_key(self.slashings, served.slashings),
            slashed_shares=compute_max_by_key(self.slashed_shares, served.slashed_shares),
            coverage_bought=max(self.coverage_bought, served.coverage_bought),
            premiums=max(self.premiums, served.premiums),
            claims_paid=max(self.claims_paid, served.claims_paid),
            challenges_opened=max(self.challenges_opened, served.challenges_opened),
            ejections=compute_max_by_key(self.ejections, served.ejections),
            churns=compute_max_by_key(self.churns, served.churns),
        )


@dataclass(frozen=True, slots=True)
class ChainSnapshot:
    block: int
    block_timestamp: int
    quorums: tuple[QuorumState, ...]
    pool: PoolState | None
    challenge_bonds: int | None
    totals: EventTotals | None  # None until the events are scanned up to a head (counters left out)
    last_batch_timestamp: int | None


class ChainStateReader(Protocol):
    """What the exporter reads from the chain; the web3 implementation is ``Web3ChainStateReader``."""

    def get_latest_block(self) -> tuple[int, int]: ...  # (number, timestamp)

    def get_block_timestamp(self, block: int) -> int: ...

    def get_token_decimals(self) -> int: ...

    def get_quorums(self, block: int) -> tuple[QuorumState, ...]: ...

    def get_pool(self, block: int) -> PoolState | None: ...

    def get_challenge_bonds(self, block: int) -> int | None: ...

    def get_event_totals(self, from_block: int, to_block: int) -> EventTotals: ...


def compute_sum_by_key(a: Mapping[int, int], b: Mapping[int, int]) -> dict[int, int]:
    return {key: a.get(key, 0) + b.get(key, 0) for key in sorted({*a, *b})}


def compute_max_by_key(a: Mapping[int, int], b: Mapping[int, int]) -> dict[int, int]:
    return {key: max(a.get(key, 0), b.get(key, 0)) for key in sorted({*a, *b})}


def compute_quorum_numbers(bitmap: int) -> tuple[int, ...]:
    return tuple(q for q in range(192) if bitmap >> q & 1)


def compute_block_ranges(start: int, end: int, chunk: int) -> list[tuple[int, int]]:
    """Inclusive ``[from, to]`` ranges covering ``start..end`` of at most ``chunk`` blocks."""
    return [(lo, min(lo + chunk - 1, end)) for lo in range(start, end + 1, chunk)]


class ChainExporter:
    """Polls a ``ChainStateReader`` and keeps the last ``ChainSnapshot`` (``process_poll``).

    Events more than ``reorg_depth`` blocks below the head are settled: scanned once and added to
    ``_totals``. The blocks above are scanned again on every poll and never kept, so an event a
    reorg moved to another block is counted once (not twice, nor missed). The counters served never
    go down (``EventTotals.at_least``): one a reorg removed for good stays counted."""

    def __init__(
        self,
        reader: ChainStateReader,
        start_block: int,
        chunk_blocks: int = LOG_CHUNK_BLOCKS,
        reorg_depth: int = DEFAULT_REORG_DEPTH,
    ) -> None:
        if chunk_blocks < 1 or reorg_depth < 0:
            raise InvalidInputError("chunk_blocks must be at least 1 and reorg_depth at least 0")
        self._reader = reader
        self._next_block = start_block  # the first block not settled yet
        self._chunk = chunk_blocks
        self._reorg_depth = reorg_depth
        self._totals = EventTotals()  # of the settled blocks
        self._served = EventTotals()  # the counters of the last snapshot
        self._last_batch_timestamp: int | None = None
        self._last_batch_block: int | None = None  # the block of that timestamp
        self._lock = threading.Lock()
        self.snapshot: ChainSnapshot | None = None
        self.decimals = reader.get_token_decimals()
        self.poll_errors = 0
        self.last_poll_timestamp: float | None = None

    def process_state(self) -> int:
        """Read the state at the latest block (stake, operators, pool, bonds) and serve it with the
        counters of the last good scan: a failing or long event scan does not freeze it. Answers the
        block read."""
        block, timestamp = self._reader.get_latest_block()
        quorums = self._reader.get_quorums(block)
        pool = self._reader.get_pool(block)
        bonds = self._reader.get_challenge_bonds(block)
        with self._lock:
            last = self.snapshot
            totals = None if last is None else last.totals
            last_batch = None if last is None else last.last_batch_timestamp
            self.snapshot = ChainSnapshot(block, timestamp, quorums, pool, bonds, totals, last_batch)
        return block

    def process_poll(self, now: float | None = None) -> ChainSnapshot:
        """``process_state``, then scan the events up to its block and serve the counters too."""
        block = self.process_state()
        settled = self._totals
        for lo, hi in compute_block_ranges(self._next_block, block - self._reorg_depth, self._chunk):
            settled = settled.add(self._reader.get_event_totals(lo, hi))
            with self._lock:  # kept chunk by chunk: a failure later in a long scan does not redo this
                self._totals = settled
                self._next_block = hi + 1
        totals = settled
        for lo, hi in compute_block_ranges(self._next_block, block, self._chunk):  # not settled: read again
            totals = totals.add(self._reader.get_event_totals(lo, hi))
        totals = totals.at_least(self._served)
        if totals.last_batch_block != self._last_batch_block:  # a new batch, or a reorg took the last one away
            last = totals.last_batch_block
            self._last_batch_timestamp = None if last is None else self._reader.get_block_timestamp(last)
            self._last_batch_block = last
        with self._lock:
            assert self.snapshot is not None  # process_state set it
            snapshot = replace(self.snapshot, totals=totals, last_batch_timestamp=self._last_batch_timestamp)
            self._served = totals
            self.snapshot = snapshot
            self.last_poll_timestamp = time.time() if now is None else now
        return snapshot

    def handle_poll_error(self) -> None:
        with self._lock:
            self.poll_errors += 1

    def get_state(self) -> tuple[ChainSnapshot | None, int, float | None]:
        with self._lock:
            return self.snapshot, self.poll_errors, self.last_poll_timestamp


class ChainCollector(Collector):
    """Serves the exporter's last snapshot; every metric carries its unit in its name."""

    def __init__(self, exporter: ChainExporter) -> None:
        self._exporter = exporter

    def collect(self) -> Iterator[Metric]:
        snapshot, errors, last_poll = self._exporter.get_state()
        yield CounterMetricFamily("avs_chain_exporter_poll_errors", "Polls of the chain that failed", value=errors)
        if last_poll is not None:
            yield GaugeMetricFamily(
                "avs_chain_exporter_last_poll_timestamp_seconds", "Unix time of the last good poll", value=last_poll
            )
        if snapshot is not None:
            yield from compute_metric_families(snapshot, self._exporter.decimals)


def _tokens(amount: int, decimals: int) -> float:
    return float(amount) / float(10**decimals)


def compute_metric_families(snapshot: ChainSnapshot, decimals: int) -> list[Metric]:
    """The Prometheus families of one snapshot (pure)."""
    out: list[Metric] = [
        GaugeMetricFamily("avs_chain_block_number", "Latest block read", value=snapshot.block),
        GaugeMetricFamily(
            "avs_chain_block_timestamp_seconds", "Timestamp of the latest block read", value=snapshot.block_timestamp
        ),
    ]
    stake = GaugeMetricFamily("avs_chain_quorum_stake_tokens", "Total slashable stake per quorum", labels=["quorum"])
    operators = GaugeMetricFamily("avs_chain_quorum_operators", "Operators registered per quorum", labels=["quorum"])
    outstanding = GaugeMetricFamily(
        "avs_chain_coverage_outstanding_tokens",
        "Insurance coverage sold and not expired, per quorum",
        labels=["quorum"],
    )
    available = GaugeMetricFamily(
        "avs_chain_coverage_available_tokens", "Coverage that can still be sold under the cap", labels=["quorum"]
    )
    for state in snapshot.quorums:
        label = [str(state.quorum)]
        stake.add_metric(label, _tokens(state.stake, decimals))
        operators.add_metric(label, state.operators)
        outstanding.add_metric(label, _tokens(state.coverage_outstanding, decimals))
        available.add_metric(label, _tokens(state.coverage_available, decimals))
    out += [stake, operators, outstanding, available]
    if snapshot.totals is not None:
        out += compute_counter_families(snapshot, snapshot.totals, decimals)
    if snapshot.pool is not None:
        out += compute_pool_families(snapshot.pool, decimals)
    if snapshot.challenge_bonds is not None:
        out.append(
            GaugeMetricFamily(
                "avs_chain_challenge_bonds_tokens",
                "Bonds locked in open challenges",
                value=_tokens(snapshot.challenge_bonds, decimals),
            )
        )
    return out


def compute_counter_families(snapshot: ChainSnapshot, totals: EventTotals, decimals: int) -> list[Metric]:
    """The event counters (and the last batch's time), once the events are scanned."""
    slashings = CounterMetricFamily(
        "avs_chain_operator_slashings", "OperatorSlashed events of the fault manager", labels=["quorum"]
    )
    slashed = CounterMetricFamily("avs_chain_slashed_shares", "Strategy shares slashed", labels=["quorum"])
    for quorum in sorted({*(s.quorum for s in snapshot.quorums), *totals.slashings}):
        slashings.add_metric([str(quorum)], totals.slashings.get(quorum, 0))
        slashed.add_metric([str(quorum)], _tokens(totals.slashed_shares.get(quorum, 0), decimals))
    ejections = CounterMetricFamily(
        "avs_chain_operator_ejections",
        "OperatorEjected events of the registry (members below the quorum minimum removed)",
        labels=["quorum"],
    )
    churns = CounterMetricFamily(
        "avs_chain_operator_churns",
        "OperatorChurned events of the registry (members of a full quorum replaced by a larger newcomer)",
        labels=["quorum"],
    )
    for quorum in sorted({*(s.quorum for s in snapshot.quorums), *totals.ejections, *totals.churns}):
        ejections.add_metric([str(quorum)], totals.ejections.get(quorum, 0))
        churns.add_metric([str(quorum)], totals.churns.get(quorum, 0))
    out: list[Metric] = [slashings, slashed, ejections, churns]
    out += [
        CounterMetricFamily("avs_chain_batches_certified", "BatchCertified events", value=totals.batches_certified),
        CounterMetricFamily(
            "avs_chain_coverage_bought_tokens", "Coverage bought", value=_tokens(totals.coverage_bought, decimals)
        ),
        CounterMetricFamily(
            "avs_chain_premiums_tokens", "Coverage premiums paid to the pool", value=_tokens(totals.premiums, decimals)
        ),
        CounterMetricFamily(
            "avs_chain_claims_paid_tokens", "Insurance claims paid", value=_tokens(totals.claims_paid, decimals)
        ),
        CounterMetricFamily("avs_chain_challenges_opened", "Challenges opened", value=totals.challenges_opened),
    ]
    if snapshot.last_batch_timestamp is not None:
        out.append(
            GaugeMetricFamily(
                "avs_chain_last_batch_certified_timestamp_seconds",
                "Block timestamp of the last BatchCertified event",
                value=snapshot.last_batch_timestamp,
            )
        )
    return out


def compute_pool_families(pool: PoolState, decimals: int) -> list[Metric]:
    return [
        GaugeMetricFamily(
            "avs_chain_insurance_pool_balance_tokens",
            "Stake-token balance of the insurance pool",
            value=_tokens(pool.balance, decimals),
        ),
        GaugeMetricFamily(
            "avs_chain_insurance_pool_free_balance_tokens",
            "Pool balance not owed to claimants",
            value=_tokens(pool.free_balance, decimals),
        ),
        GaugeMetricFamily(
            "avs_chain_insurance_claimable_tokens",
            "Claims proven and not yet paid",
            value=_tokens(pool.total_claimable, decimals),
        ),
        GaugeMetricFamily(
            "avs_chain_insurance_owed_tokens",
            "Payouts and challenger rewards owed and not funded yet (e.g. until a slash is cleared to the pool)",
            value=_tokens(pool.total_owed, decimals),
        ),
    ]


class Web3ChainStateReader:
    """``ChainStateReader`` over web3.py and the deployment's contracts."""

    def __init__(self, w3: Web3, deployment: Deployment) -> None:
        self.w3 = w3

        def contract(address: str, name: str) -> Any:
            return w3.eth.contract(address=Web3.to_checksum_address(address), abi=load_abi(name))

        self._registry = contract(deployment.operator_registry, "OperatorRegistry")
        self._task_manager = contract(deployment.task_manager, "InferenceTaskManager")
        self._token = contract(deployment.stake_token, "TestToken")
        self._pool = contract(deployment.insurance_pool, "InsurancePool") if deployment.insurance_pool else None
        self._faults = contract(deployment.fault_manager, "FaultManager") if deployment.fault_manager else None

    def get_latest_block(self) -> tuple[int, int]:
        block = self.w3.eth.get_block("latest")
        return int(block["number"]), int(block["timestamp"])

    def get_block_timestamp(self, block: int) -> int:
        return int(self.w3.eth.get_block(block)["timestamp"])

    def get_token_decimals(self) -> int:
        return int(self._token.functions.decimals().call())

    def get_quorums(self, block: int) -> tuple[QuorumState, ...]:
        bitmap = int(self._registry.functions.quorumBitmap().call(block_identifier=block))
        return tuple(self._get_quorum(q, block) for q in compute_quorum_numbers(bitmap))

    def _get_quorum(self, quorum: int, block: int) -> QuorumState:
        registry = self._registry.functions
        outstanding = available = 0
        if self._pool is not None:
            outstanding = int(self._pool.functions.outstandingCoverage(quorum).call(block_identifier=block))
            available = int(self._pool.functions.availableCoverage(quorum).call(block_identifier=block))
        return QuorumState(
            quorum=quorum,
            stake=int(registry.getCurrentTotalStake(quorum).call(block_identifier=block)),
            operators=int(registry.operatorCount(quorum).call(block_identifier=block)),
            coverage_outstanding=outstanding,
            coverage_available=available,
        )

    def get_pool(self, block: int) -> PoolState | None:
        if self._pool is None:
            return None
        pool = self._pool.functions
        return PoolState(
            balance=int(self._token.functions.balanceOf(self._pool.address).call(block_identifier=block)),
            free_balance=int(pool.freeBalance().call(block_identifier=block)),
            total_claimable=int(pool.totalClaimable().call(block_identifier=block)),
            total_owed=int(pool.totalOwed().call(block_identifier=block)),
        )

    def get_challenge_bonds(self, block: int) -> int | None:
        if self._faults is None:
            return None
        return int(self._faults.functions.totalBonds().call(block_identifier=block))

    def get_event_totals(self, from_block: int, to_block: int) -> EventTotals:
        batches = self._logs(self._task_manager, "BatchCertified", from_block, to_block)
        slashes = self._logs(self._faults, "OperatorSlashed", from_block, to_block)
        bought = self._logs(self._pool, "CoverageBought", from_block, to_block)
        claims = self._logs(self._pool, "Claimed", from_block, to_block)
        challenges = self._logs(self._faults, "ChallengeOpened", from_block, to_block)
        ejected = self._logs(self._registry, "OperatorEjected", from_block, to_block)
        churned = self._logs(self._registry, "OperatorChurned", from_block, to_block)
        return compute_event_totals(batches, slashes, bought, claims, len(challenges), ejected, churned)

    def _logs(self, contract: Any, event: str, from_block: int, to_block: int) -> list[Any]:
        if contract is None:
            return []
        reader = contract.events[event]()
        return get_logs_splitting(
            lambda lo, hi: list(reader.get_logs(from_block=lo, to_block=hi)), from_block, to_block
        )


def get_logs_splitting(fetch: Callable[[int, int], list[Any]], from_block: int, to_block: int) -> list[Any]:
    """``fetch(from_block, to_block)``, the range halved while the node refuses it: providers cap
    ``eth_getLogs`` by blocks or by results, some below ``--log-chunk-blocks``. The node unreachable
    (``OSError``), or a single block refused, is raised."""
    try:
        return fetch(from_block, to_block)
    except OSError:
        raise
    except Exception:
        if from_block >= to_block:
            raise
        middle = (from_block + to_block) // 2
        logger.info("eth_getLogs range refused; halving it", extra={"from_block": from_block, "to_block": to_block})
        return get_logs_splitting(fetch, from_block, middle) + get_logs_splitting(fetch, middle + 1, to_block)


def compute_event_totals(
    batches: Sequence[Any],
    slashes: Sequence[Any],
    bought: Sequence[Any],
    claims: Sequence[Any],
    challenges: int,
    ejected: Sequence[Any] = (),
    churned: Sequence[Any] = (),
) -> EventTotals:
    """Totals of decoded web3 event logs (``blockNumber`` and ``args`` as web3 gives them)."""
    slashings: dict[int, int] = {}
    slashed: dict[int, int] = {}
    for log in slashes:
        quorum = int(log["args"]["quorumNumber"])
        slashings[quorum] = slashings.get(quorum, 0) + 1
        slashed[quorum] = slashed.get(quorum, 0) + int(log["args"]["slashedShares"])
    return EventTotals(
        batches_certified=len(batches),
        last_batch_block=max((int(log["blockNumber"]) for log in batches), default=None),
        slashings=slashings,
        slashed_shares=slashed,
        coverage_bought=sum(int(log["args"]["amount"]) for log in bought),
        premiums=sum(int(log["args"]["premium"]) for log in bought),
        claims_paid=sum(int(log["args"]["amount"]) for log in claims),
        challenges_opened=challenges,
        ejections=dict(Counter(int(log["args"]["quorumNumber"]) for log in ejected)),
        churns=dict(Counter(int(log["args"]["quorumNumber"]) for log in churned)),
    )


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise InvalidInputError(f"listen address {listen!r} must be host:port")
    return host, int(port)


def run_poll_loop(exporter: ChainExporter, poll_seconds: float, stopped: threading.Event) -> None:
    while not stopped.is_set():
        try:
            exporter.process_poll()
        except Exception:
            exporter.handle_poll_error()
            logger.exception("chain poll failed; retrying")
        stopped.wait(poll_seconds)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m avs.monitoring.chain_exporter", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--rpc-url",
        default=default_rpc_url(),
        help=f"Ethereum JSON-RPC endpoint (default ${RPC_URL_ENV}, which keeps an API key out of ps)",
    )
    parser.add_argument("--deployment", required=True, help="deployment JSON written by contracts/script/Deploy.s.sol")
    parser.add_argument("--listen", default=DEFAULT_LISTEN, help=f"host:port of /metrics (default {DEFAULT_LISTEN})")
    parser.add_argument("--poll-seconds", type=float, default=DEFAULT_POLL_SECONDS)
    parser.add_argument("--start-block", type=int, help="first block to scan events from (default: the deployment's)")
    parser.add_argument(
        "--reorg-depth",
        type=int,
        default=DEFAULT_REORG_DEPTH,
        help=f"blocks below the head whose events are read again on every poll (default {DEFAULT_REORG_DEPTH})",
    )
    parser.add_argument(
        "--log-chunk-blocks",
        type=int,
        default=LOG_CHUNK_BLOCKS,
        help=f"blocks per eth_getLogs request (default {LOG_CHUNK_BLOCKS}; a refused range is halved)",
    )
    parser.add_argument("--log-level", default="INFO")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from avs.logs import configure_json_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.rpc_url:
        parser.error(f"--rpc-url or ${RPC_URL_ENV} is required")
    configure_json_logging(args.log_level)
    try:
        return serve(args)
    except Exception as exc:  # one line, whatever failed at start; the URL's secrets kept out of it
        print(f"chain-exporter: {redact_urls(str(exc))}", file=sys.stderr)
        return 2


def serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    deployment = load_deployment(Path(args.deployment))
    host, port = split_listen(args.listen)
    w3 = Web3(Web3.HTTPProvider(args.rpc_url, request_kwargs={"timeout": 30}))
    if (chain_id := int(w3.eth.chain_id)) != deployment.chain_id:  # same addresses on two chains are common
        raise InvalidInputError(
            f"{redact_urls(args.rpc_url)} is chain {chain_id}, the deployment {args.deployment} is for chain"
            f" {deployment.chain_id}"
        )
    start = args.start_block if args.start_block is not None else deployment.start_block
    reader = Web3ChainStateReader(w3, deployment)
    exporter = ChainExporter(reader, start, chunk_blocks=args.log_chunk_blocks, reorg_depth=args.reorg_depth)
    # Fail fast on a wrong RPC URL or deployment; the event scan (from the deployment's block, long on
    # a long chain) is the poll loop's, which retries it and keeps each chunk read.
    exporter.process_state()
    registry = CollectorRegistry()
    registry.register(ChainCollector(exporter))
    server, thread = start_metrics_server(host, port, registry)
    stopped = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ready = {"event": "ready", "metrics_port": server.server_address[1], "chain_id": deployment.chain_id}
    print(json.dumps(ready), flush=True)
    poller = threading.Thread(target=run_poll_loop, args=(exporter, args.poll_seconds, stopped), daemon=True)
    poller.start()
    stopped.wait()
    poller.join(timeout=args.poll_seconds + 30)
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
