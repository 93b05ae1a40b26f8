"""The challenger's logic over small Protocols: watch certified batches, re-verify a sample of
their leaves through an operator (prefill), escalate a leaf found wrong within the challenge window
(``FaultManager.challenge``, which locks the challenger's bond), and see each challenge through to
its end (``resolution.Resolver``: the escalation quorum's certificate and ``resolveChallenge``, or
``expireChallenge`` after the resolution window).

For each ``BatchCertified`` event it fetches the batch's leaves and each sampled leaf's certificate
from the aggregator (every leaf of a request the batch holds more than once is sampled: the
aggregator has one certificate per request), checks that the certificate matches what was certified
on-chain (header, signatory record hash, Merkle proof) and is for the leaf's output (another output
of the request cannot be re-verified: reported unchecked, never accepted), and asks operators to
verify the output (``LeafChecker``: operators that did not sign the batch first). A validly signed
REJECT opens a challenge. An ACCEPT is final when an operator that did not sign the batch gave it,
or when every operator of the batch's quorums signed it; a check that got no answer, or only the
signers' ACCEPT while others exist, is retried at the next polls (``check_attempts`` in all), as
is a leaf whose check failed (the aggregator or the chain unreachable): one leaf never stops the
others.

Everything it decides is in its ``ChallengerStore`` before it moves on: the next block to scan
(advanced after each batch), one finding per leaf, the leaves to retry, each challenge it opened.
Killed anywhere and restarted, it re-scans at most the batch it was in, skips leaves it already has
findings for, retries the unfinished ones, never opens a second challenge of a leaf it has one for,
and goes on resolving the open ones.

A REJECT the escalation quorum upholds is a decision, not a check to retry: the leaf is marked "to
challenge" before its transaction and stays marked until the chain shows the challenge (adopted from
``latestChallengeOfLeaf``, never from the guess in a revert estimated on the pending state, nor one
past its resolution window: that one is expired and ours sent) or
refuses it for good (``ChallengeWindowClosed``, ``LeafNotCertified``). A send that fails otherwise
(RPC down, receipt timeout, the bond short) is sent again at every poll until then, however long the
challenge window, and without asking the operators again.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from avs.chain.client import ChallengeWindow, ContractRevertError
from avs.chain.faults import Challenge, ChallengeStatus
from avs.client import verify_certificate
from avs.errors import UnavailableError
from avs.logs import redact_urls
from avs.merkle import BatchLeaf, compute_merkle_tree
from avs.messages import BatchHeader, Verdict
from avs.rpc import convert
from avs.rpc.aggregator.v1 import aggregator_pb2 as ag
from avs_aggregator.challenger.store import (
    ChallengeRow,
    ChallengerStore,
    ChallengeState,
    FindingRow,
    PendingCheckRow,
    SentChallengeRow,
)
from avs_aggregator.ports import OperatorInfo

logger = logging.getLogger(__name__)
# A challenge the chain does not show is given up at the latest this many blocks after it was opened
# (a lagging RPC node, or a reorg that will include it again); earlier while the chain names no
# challenge of its leaf and a new one can still be mined in the batch's window (``Resolver._is_gone``).
CHALLENGE_GONE_DEPTH = 64
# Open challenges are moved on at least this often, also in the middle of a poll's leaf checks.
RESOLVE_EVERY_SECONDS = 30.0
# Reverts after which sending the challenge again can never succeed: the leaf's challenge is given up.
FINAL_CHALLENGE_REVERTS = frozenset({"ChallengeWindowClosed", "LeafNotCertified"})
# The finding of a leaf (or batch) not checked because it can no longer be challenged.
WINDOW_CLOSED = "not checked: its challenge window closed first"
# The finding of a leaf whose request the aggregator certifies with another output (GetStatus has one
# certificate per request): the leaf's output tokens are not to be had, so it cannot be re-verified.
OTHER_OUTPUT = "not checked: the aggregator's certificate of its request is for another output"


@dataclass(frozen=True, slots=True)
class CertifiedBatch:
    """One ``BatchCertified`` event."""

    header: BatchHeader
    signatory_record_hash: bytes
    block: int


@dataclass(frozen=True, slots=True)
class Finding:
    batch_index: int
    request_hash: bytes  # empty: about the whole batch (its leaves unavailable, or not the certified ones)
    output_hash: bytes
    verdict: Verdict | None  # None: could not be checked
    detail: str = ""
    challenge_tx: bytes | None = None
    challenge_id: int | None = None


@dataclass(frozen=True, slots=True)
class OpenedChallenge:
    challenge_id: int
    opened_block: int
    tx_hash: bytes


@dataclass(frozen=True, slots=True)
class CheckerAnswer:
    """One operator asked to verify a leaf."""

    operator_id: bytes
    is_signer: bool  # it signed the batch (its answer vouches for its own output)
    verdict: Verdict | None  # None: no validly signed answer over the certified output (down, slow, bad)
    detail: str = ""


@dataclass(frozen=True, slots=True)
class LeafCheck:
    """What the operators asked about one leaf said."""

    answers: tuple[CheckerAnswer, ...]
    has_independent: bool  # the batch's quorums have operators that did not sign it


class LeafCheckIncomplete(UnavailableError):
    """The leaf could not be checked this time (nobody answered, or only its signers accepted it)."""


def compute_check_verdict(check: LeafCheck) -> Verdict | None:
    """REJECT if any operator validly rejected the output, else ACCEPT if any accepted it."""
    verdicts = {a.verdict for a in check.answers}
    if Verdict.REJECT in verdicts:
        return Verdict.REJECT
    return Verdict.ACCEPT if Verdict.ACCEPT in verdicts else None


def is_final_check(check: LeafCheck) -> bool:
    """A REJECT is final; an ACCEPT only when a non-signer gave it or every operator signed the batch."""
    verdict = compute_check_verdict(check)
    if verdict != Verdict.ACCEPT:
        return verdict == Verdict.REJECT
    return not check.has_independent or any(a.verdict == Verdict.ACCEPT and not a.is_signer for a in check.answers)


def compute_leaf_check(result: LeafCheck | Verdict) -> LeafCheck:
    """A bare verdict (a checker the challenger trusts, e.g. its own engine) is a final check."""
    if isinstance(result, LeafCheck):
        return result
    return LeafCheck((CheckerAnswer(b"", False, result),), has_independent=True)


def compute_sample(leaves: Sequence[BatchLeaf], sample_rate: float, rng: random.Random) -> list[BatchLeaf]:
    """The leaves to check, each once: a ``sample_rate`` share drawn at random, and every leaf of a
    request the batch holds with more than one output. GetStatus answers one certificate per request,
    so a tree certified with (R, good) and (R, bad) would show only (R, good), and the certified
    (R, bad) would never be looked at; an honest aggregator batches a request once."""
    distinct = list(dict.fromkeys(leaves))
    outputs = Counter(leaf.request_hash for leaf in distinct)
    return [leaf for leaf in distinct if outputs[leaf.request_hash] > 1 or rng.random() < sample_rate]


def compute_checker_order(
    operators: Sequence[OperatorInfo], signer_ids: Collection[bytes], quorums: bytes, rng: random.Random
) -> tuple[OperatorInfo, ...]:
    """Who to ask, in order: the operators that did not sign the batch, then its signers, each group
    in a stake-weighted random order (Efraimidis-Spirakis keys; no stake in ``quorums``: last).

    The key u ** (1 / w) is taken as its logarithm, log(u) / w: stakes are in wei, and u ** (1 / w)
    rounds to 1.0 for every w above ~1e17, which left the order to the (ascending id) input order,
    so an operator could grind a low id and always be asked first."""

    def key(operator: OperatorInfo) -> float:
        weight = sum(operator.stakes.get(q, 0) for q in quorums)
        draw = 1.0 - rng.random()  # in (0, 1]: log(0) is undefined
        return math.log(draw) / weight if weight > 0 else -math.inf

    def shuffled(group: list[OperatorInfo]) -> list[OperatorInfo]:
        keys = {o.operator_id: key(o) for o in group}
        return sorted(group, key=lambda o: keys[o.operator_id], reverse=True)

    independent = [o for o in operators if o.operator_id not in signer_ids]
    signers = [o for o in operators if o.operator_id in signer_ids]
    return (*shuffled(independent), *shuffled(signers))


class BatchFeed(Protocol):
    def get_block_number(self) -> int: ...

    def get_certified_batches(self, from_block: int, to_block: int) -> list[CertifiedBatch]: ...


class LeafSource(Protocol):
    def get_batch_leaves(self, batch_index: int) -> list[BatchLeaf]:
        """The batch's leaves, from its aggregator (checked against the certified root: it is watched)."""
        ...

    def get_certificate(self, request_hash: bytes) -> ag.Certificate: ...


class LeafChecker(Protocol):
    def check(self, certificate: ag.Certificate) -> LeafCheck | Verdict:
        """Re-verify the certified output by prefill: through operators (``LeafCheck``, their
        answers), or a checker the challenger trusts, e.g. an own engine (a final ``Verdict``)."""
        ...


class Escalator(Protocol):
    def challenge(
        self, header: BatchHeader, signatory_record_hash: bytes, leaf: tuple[bytes, bytes], proof: Sequence[bytes]
    ) -> OpenedChallenge:
        """Send ``FaultManager.challenge`` and wait for it. Raises ``ContractRevertError``
        (``LeafAlreadyChallenged(challengeId)``, ``ChallengeWindowClosed``, ...)."""
        ...

    def get_challenge(self, challenge_id: int) -> Challenge: ...

    def find_leaf_challenge(self, batch_index: int, request_hash: bytes, output_hash: bytes) -> int:
        """The latest challenge of the leaf in the mined state (``latestChallengeOfLeaf``); 0 if none."""
        ...

    def get_challenge_window(self) -> ChallengeWindow:
        """The task manager's challenge window (``challengeWindowBlocks`` and the record of its last
        lowering): ``deadline(certified_block)`` is the last block a batch's leaves can be challenged."""
        ...

    def expire_challenge(self, challenge_id: int) -> bytes:
        """Send ``expireChallenge`` (anyone may, once the challenge is past its resolution window;
        the bond goes back to whoever opened it). Raises ``ContractRevertError``."""
        ...


class ChallengeAdvancer(Protocol):
    """What moves open challenges on (``resolution.Resolver``)."""

    def advance_all(self) -> list[ChallengeRow]: ...


def finding_from_row(row: FindingRow) -> Finding:
    verdict = None if row.verdict is None else Verdict(row.verdict)
    return Finding(
        row.batch_index, row.request_hash, row.output_hash, verdict, row.detail, row.challenge_tx, row.challenge_id
    )


class Challenger:
    def __init__(
        self,
        feed: BatchFeed,
        leaves: LeafSource,
        checker: LeafChecker,
        escalator: Escalator | None,
        store: ChallengerStore,
        resolver: ChallengeAdvancer | None = None,
        sample_rate: float = 0.1,
        start_block: int | None = None,
        rng: random.Random | None = None,
        check_attempts: int = 10,
        confirm: Callable[[ag.Certificate], tuple[Verdict | None, str]] | None = None,
        confirmations: int = 0,
        resolve_every_seconds: float = RESOLVE_EVERY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        find_challenge_tx: Callable[[int, int], bytes | None] | None = None,
    ) -> None:
        self.feed = feed
        # Blocks on top of a BatchCertified event before it is scanned: a scanned block is never
        # scanned again, so a reorg deeper than this could hide a batch from the challenger.
        self.confirmations = confirmations
        self.confirm = confirm  # the escalation quorum's verdict, asked before bonding a challenge
        self.leaves = leaves
        self.checker = checker
        self.escalator = escalator
        self.store = store
        self.resolver = resolver
        self.sample_rate = sample_rate
        self.rng = rng or random.Random()
        self.check_attempts = check_attempts
        self.resolve_every_seconds = resolve_every_seconds
        self.clock = clock
        self._resolved_at = clock()
        # The transaction that opened challenge (id, opened block), for one adopted from the chain
        # (``Web3Escalator.find_challenge_tx``: its ChallengeOpened log); None: not looked up.
        self.find_challenge_tx = find_challenge_tx
        # The task manager's challengeWindowBlocks, read once per poll (``_get_challenge_window``).
        self._challenge_window: ChallengeWindow | None = None
        # Leaves whose challenge was given up to a reorg and then refused for good when sent again:
        # ended without an outcome, for the metrics (``take_lost_challenges``).
        self._lost_challenges: list[Finding] = []
        if store.get_next_block() is None:  # a fresh database: start where told, else at the head
            store.set_next_block(start_block if start_block is not None else feed.get_block_number() + 1)

    @property
    def next_block(self) -> int:
        block = self.store.get_next_block()
        assert block is not None
        return block

    @property
    def findings(self) -> list[Finding]:
        return [finding_from_row(row) for row in self.store.list_findings()]

    def poll(self) -> list[Finding]:
        """Send again the challenges not on chain yet, retry the unfinished checks, process the batches
        certified since the last poll, then move the open challenges on (also when the scan failed);
        returns the new findings."""
        self._challenge_window = None  # read again once this poll needs it: governance may change it
        try:
            return self.advance_sent_challenges() + self.retry_pending() + self.scan()
        finally:
            self._advance_challenges()

    def take_lost_challenges(self) -> list[Finding]:
        """The leaves whose challenge ended lost since the last call: given up to a reorg (not counted
        as ended then), then refused for good when sent again (the finding of each, updated)."""
        lost, self._lost_challenges = self._lost_challenges, []
        return lost

    def _advance_challenges(self) -> None:
        if self.resolver is not None:
            self._resolved_at = self.clock()
            self.resolver.advance_all()

    def _advance_challenges_if_due(self) -> None:
        """Between leaves: a long poll (a big batch, a backlog after downtime, slow operators) must
        not keep the open challenges past their resolution window, which would let them expire."""
        if self.clock() - self._resolved_at >= self.resolve_every_seconds:
            self._advance_challenges()

    def scan(self) -> list[Finding]:
        to_block = self.feed.get_block_number() - self.confirmations
        start = self.next_block
        if to_block < start:
            return []
        found: list[Finding] = []
        for batch in sorted(self.feed.get_certified_batches(start, to_block), key=lambda b: b.block):
            found += self.process_batch(batch)
            self.store.set_next_block(batch.block)  # a crash re-scans this block only
        self.store.set_next_block(to_block + 1)
        return found

    def retry_pending(self) -> list[Finding]:
        """One more attempt at each leaf (or batch) whose check did not finish at an earlier poll."""
        found: list[Finding] = []
        for row in self.store.list_pending_checks():
            header = BatchHeader(row.batch_index, row.leaves_root, row.reference_block, row.quorum_numbers)
            batch = CertifiedBatch(header, row.signatory_record_hash, row.block)
            if row.request_hash:
                found += self.check_leaf(batch, row.request_hash, row.output_hash)
            else:
                found += self.process_batch(batch)
        return found

    def process_batch(self, batch: CertifiedBatch) -> list[Finding]:
        index = batch.header.batch_index
        if self._is_past_challenge_window(batch):
            self.store.remove_pending_check(index, b"", b"")
            if self.store.has_finding(index, b"", b""):  # a re-scan after a restart
                return []
            return [self._record(Finding(index, b"", b"", None, WINDOW_CLOSED))]
        try:
            leaves = self.leaves.get_batch_leaves(index)
        except Exception as exc:  # another aggregator's batch, or the aggregator is down
            logger.warning("cannot fetch the batch's leaves", extra={"batch_index": index, "error": str(exc)})
            return self._defer(batch, b"", b"", f"leaves unavailable: {exc}")
        if not leaves or compute_merkle_tree(leaves).root != batch.header.leaves_root:
            # A list that leaves out (or makes up) a leaf would keep a wrong output from being sampled.
            problem = f"the aggregator's {len(leaves)} leaves do not build the certified leaves root"
            logger.warning("batch leaves do not match the chain", extra={"batch_index": index, "problem": problem})
            self.store.remove_pending_check(index, b"", b"")
            if self.store.has_finding(index, b"", b""):  # a re-scan after a restart
                return []
            return [self._record(Finding(index, b"", b"", None, problem))]
        sampled = compute_sample(leaves, self.sample_rate, self.rng)
        # The sampled leaves replace the batch's pending row in one write: a crash while checking
        # them finds them pending at the next start, not a batch that is neither pending nor checked.
        rows = [self._pending_row(batch, leaf.request_hash, leaf.output_hash, "sampled") for leaf in sampled]
        self.store.add_pending_checks(rows, index)
        found: list[Finding] = []
        for leaf in sampled:
            found += self.check_leaf(batch, leaf.request_hash, leaf.output_hash)
        return found

    def check_leaf(self, batch: CertifiedBatch, request_hash: bytes, output_hash: bytes) -> list[Finding]:
        """``process_leaf`` and its finding, or, when it could not finish, the leaf kept for a retry."""
        self._advance_challenges_if_due()
        index = batch.header.batch_index
        if self.store.has_finding(index, request_hash, output_hash):  # seen before a restart
            self.store.remove_pending_check(index, request_hash, output_hash)
            return []
        try:
            finding = self.process_leaf(batch, request_hash, output_hash)
        except Exception as exc:  # this leaf only: the others are checked, it is retried
            extra = {"batch_index": index, "request": "0x" + request_hash.hex(), "error": redact_urls(str(exc))}
            logger.warning("leaf not checked; retrying at the next poll", extra=extra)
            return self._defer(batch, request_hash, output_hash, str(exc))
        if finding is not None:
            self._record(finding)
        # Checked: no longer pending (a challenge not sent yet is marked "to challenge").
        self.store.remove_pending_check(index, request_hash, output_hash)
        return [] if finding is None else [finding]

    def _defer(self, batch: CertifiedBatch, request_hash: bytes, output_hash: bytes, problem: str) -> list[Finding]:
        """Keep the leaf (or batch) for the next poll; after ``check_attempts``, record it unchecked."""
        index = batch.header.batch_index
        attempts = self._keep_pending(batch, request_hash, output_hash, problem)
        if attempts < self.check_attempts:
            return []
        detail = f"unchecked after {attempts} attempts: {problem}"
        finding = self._record(Finding(index, request_hash, output_hash, None, detail))
        self.store.remove_pending_check(index, request_hash, output_hash)
        return [finding]

    def _keep_pending(self, batch: CertifiedBatch, request_hash: bytes, output_hash: bytes, problem: str) -> int:
        """Store the leaf (or batch) as still to check; returns how often it has been."""
        return self.store.process_pending_check(self._pending_row(batch, request_hash, output_hash, problem))

    @staticmethod
    def _pending_row(batch: CertifiedBatch, request_hash: bytes, output_hash: bytes, problem: str) -> PendingCheckRow:
        header = batch.header
        return PendingCheckRow(
            batch_index=header.batch_index,
            request_hash=request_hash,
            output_hash=output_hash,
            leaves_root=header.leaves_root,
            reference_block=header.reference_block,
            quorum_numbers=header.quorum_numbers,
            signatory_record_hash=batch.signatory_record_hash,
            block=batch.block,
            error=redact_urls(problem)[:2000],
        )

    def process_leaf(self, batch: CertifiedBatch, request_hash: bytes, output_hash: bytes) -> Finding | None:
        """The leaf's finding; None when it is to be challenged and the challenge is not on chain yet."""
        index = batch.header.batch_index
        if self._is_past_challenge_window(batch):
            return Finding(index, request_hash, output_hash, None, WINDOW_CLOSED)
        certificate = self.leaves.get_certificate(request_hash)
        if not certificate.request_hash:  # the chain saw the batch before the aggregator recorded it
            raise LeafCheckIncomplete("the aggregator has no certificate for the leaf yet")
        # A leaf pending from before leaves were kept with their output has none: the certificate's
        # output is taken for it, as it was then.
        output_hash = output_hash or bytes(certificate.output_hash)
        problem = self._check_against_chain(batch, certificate, request_hash)
        if problem:
            logger.warning("certificate does not match the chain", extra={"batch_index": index, "problem": problem})
            return Finding(index, request_hash, output_hash, None, problem)
        if bytes(certificate.output_hash) != output_hash:  # another leaf's output: never checked in its place
            logger.warning("the certificate is for another output of the request", extra={"batch_index": index})
            return Finding(index, request_hash, output_hash, None, OTHER_OUTPUT)
        check = compute_leaf_check(self.checker.check(certificate))
        verdict = compute_check_verdict(check)
        if verdict is None or not is_final_check(check):
            raise LeafCheckIncomplete(describe_check(check))
        if verdict == Verdict.ACCEPT or self.escalator is None:
            return Finding(index, request_hash, output_hash, verdict)
        existing = self.store.find_challenge(index, request_hash, output_hash)
        if existing is not None:
            detail, tx = "already challenged", existing.open_tx
            return Finding(index, request_hash, output_hash, verdict, detail, tx, existing.challenge_id)
        if self.confirm is not None:
            predicted, shares = self.confirm(certificate)
            if predicted is None:  # the escalation quorum cannot decide now (operators down): later
                raise LeafCheckIncomplete(f"a REJECT, but no escalation verdict yet ({shares})")
            if predicted == Verdict.ACCEPT:  # a lone or minority REJECT: a challenge would lose the bond
                logger.warning("a REJECT the escalation quorum overrules; not challenged", extra={"shares": shares})
                detail = f"minority REJECT overruled ({shares})"
                return Finding(index, request_hash, output_hash, Verdict.ACCEPT, detail)
        return self._send_challenge(batch, certificate)

    def _is_past_challenge_window(self, batch: CertifiedBatch) -> bool:
        """Whether the chain would refuse a challenge of the batch now (``ChallengeWindowClosed``).
        Such a batch is not checked while escalating: after a downtime, its checks would spend the time
        left to the batches that can still be challenged. False if the chain cannot tell now."""
        if self.escalator is None:
            return False
        try:
            # A transaction sent at head H runs in block H + 1 at the earliest: at H == the deadline
            # the chain already refuses it (``block.number > challengeDeadline``).
            return self.feed.get_block_number() >= self._get_challenge_window().deadline(batch.block)
        except Exception as exc:
            logger.warning("challenge window not read", extra={"error": redact_urls(str(exc))})
            return False

    def _get_challenge_window(self) -> ChallengeWindow:
        """The task manager's challenge window, read once per poll (``poll`` forgets it), not
        for every batch and leaf: a config call each is an RPC round trip for a value governance
        seldom changes. The head is still read at each check: a long poll moves it on."""
        assert self.escalator is not None
        if self._challenge_window is None:
            self._challenge_window = self.escalator.get_challenge_window()
        return self._challenge_window

    def _send_challenge(self, batch: CertifiedBatch, certificate: ag.Certificate) -> Finding | None:
        """Mark the leaf "to challenge", then send ``FaultManager.challenge`` (``_attempt_challenge``).
        The mark comes first: a challenge mined after a receipt timeout or a crash is adopted."""
        sent = SentChallengeRow(
            batch_index=batch.header.batch_index,
            request_hash=bytes(certificate.request_hash),
            output_hash=bytes(certificate.output_hash),
            certificate=certificate.SerializeToString(deterministic=True),
            sent_block=self.feed.get_block_number(),
        )
        self.store.mark_challenge_sent(sent)
        return self._attempt_challenge(sent)

    def _attempt_challenge(self, sent: SentChallengeRow) -> Finding | None:
        """Send the marked leaf's challenge. Its finding once the chain opened the challenge or refused
        it for good; None while the mark stays, to be looked up and sent again at the next poll."""
        assert self.escalator is not None
        certificate = ag.Certificate.FromString(sent.certificate)
        header = convert.batch_header_from_proto(certificate.batch_header)
        index, leaf = sent.batch_index, (sent.request_hash, sent.output_hash)
        extra = {"batch_index": index, "request": "0x" + sent.request_hash.hex()}
        try:
            opened = self.escalator.challenge(
                header, bytes(certificate.signatory_record_hash), leaf, [bytes(p) for p in certificate.merkle_proof]
            )
        except ContractRevertError as exc:
            if exc.name in FINAL_CHALLENGE_REVERTS:
                self.store.unmark_challenge_sent(*_leaf_key(sent))
                logger.warning("challenge refused", extra={**extra, "error": str(exc)})
                return Finding(index, *leaf, Verdict.REJECT, f"challenge refused: {exc}")
            if exc.name == "LeafAlreadyChallenged":
                # Someone's mined challenge, or ours still in the mempool: the id in a revert estimated
                # on the pending state is only a guess, so it is read from the mined state, now or later.
                adopted = self._lookup_sent_quietly(sent)
                if adopted is not None:
                    return Finding(index, *leaf, Verdict.REJECT, "already challenged", adopted[1], adopted[0])
            logger.warning(
                "challenge not opened; sending it again at the next poll", extra={**extra, "error": str(exc)}
            )
            return None
        except Exception as exc:  # RPC down, receipt timeout: the mark stays, and the window decides
            logger.warning(
                "challenge not sent; sending it again at the next poll", extra={**extra, "error": redact_urls(str(exc))}
            )
            return None
        self._adopt(opened.challenge_id, certificate, opened.opened_block, opened.tx_hash)
        self.store.unmark_challenge_sent(*_leaf_key(sent))
        logger.warning("leaf escalated", extra={**extra, "challenge_id": opened.challenge_id})
        return Finding(index, *leaf, Verdict.REJECT, "challenged", opened.tx_hash, opened.challenge_id)

    def advance_sent_challenges(self) -> list[Finding]:
        """Each leaf marked "to challenge": adopt its challenge once the chain shows it, else send the
        challenge again (refused for good once the window closed); a finding for a leaf that has none."""
        found: list[Finding] = []
        for sent in self.store.list_sent_challenges():
            try:
                adopted = self._lookup_sent_quietly(sent)
                if adopted is not None:
                    # After a crash or a receipt timeout: the finding names the transaction that opened
                    # it (from its ChallengeOpened log; None when that could not be read).
                    detail = "challenged (adopted from the chain)"
                    leaf = (sent.request_hash, sent.output_hash)
                    finding: Finding | None = Finding(
                        sent.batch_index, *leaf, Verdict.REJECT, detail, adopted[1], adopted[0]
                    )
                else:
                    finding = self._attempt_challenge(sent)
            except Exception as exc:  # the chain is unreachable: next poll
                extra = {"batch_index": sent.batch_index, "error": redact_urls(str(exc))}
                logger.warning("challenge to send not looked up", extra=extra)
                continue
            if finding is None:
                continue
            if self.store.has_finding(*_leaf_key(sent)):  # its challenge was lost to a reorg
                self.store.update_finding_challenge(_finding_row(finding))  # not a new finding
                if finding.challenge_id is None:
                    # Refused for good (ChallengeWindowClosed, LeafNotCertified): the leaf's challenge,
                    # counted as opened when it first was and not as ended when a reorg took it,
                    # ends here, without an outcome; counted so, the opened ones all end.
                    self._lost_challenges.append(finding)
            else:
                found.append(self._record(finding))
                self.store.remove_pending_check(*_leaf_key(sent))
        return found

    def _lookup_sent_quietly(self, sent: SentChallengeRow) -> tuple[int, bytes | None] | None:
        """``_lookup_sent``, None when the chain cannot be read: the mark stays for the next poll."""
        try:
            return self._lookup_sent(sent)
        except Exception as exc:
            logger.warning(
                "challenge not looked up", extra={"batch_index": sent.batch_index, "error": redact_urls(str(exc))}
            )
            return None

    def _lookup_sent(self, sent: SentChallengeRow) -> tuple[int, bytes | None] | None:
        """The marked leaf's challenge from the mined state, recorded and its mark removed: its id and
        opening transaction (None if not found). None while the chain shows none that can still
        end in our favour (an expired one, or an open one past its resolution window, is never adopted)."""
        assert self.escalator is not None
        challenge_id = self.escalator.find_leaf_challenge(*_leaf_key(sent))
        if not challenge_id:
            return None
        on_chain = self.escalator.get_challenge(challenge_id)
        # latestChallengeOfLeaf may name an earlier challenge that expired (someone's, or ours before
        # a reorg): it is dead and does not stand in the way of a new one, so ours is sent instead.
        if on_chain.status == ChallengeStatus.EXPIRED:
            return None
        if on_chain.status == ChallengeStatus.OPEN and (
            self.feed.get_block_number() >= on_chain.opened_block + on_chain.resolution_window
        ):
            # Open but at the end of its own resolution window (the next block is past it: resolving
            # reverts, expiring works): it can no longer be resolved, only expired, so
            # adopting it would leave the fraud unpunished. The contract refuses a new challenge of
            # the leaf (LeafAlreadyChallenged) until it is expired: expire it (anyone may; the bond
            # goes back to its challenger) and send ours while the challenge window allows it.
            self._expire_stale(challenge_id)
            return None
        open_tx = self._find_challenge_tx_quietly(challenge_id, on_chain.opened_block)
        self._adopt(challenge_id, ag.Certificate.FromString(sent.certificate), on_chain.opened_block, open_tx)
        self.store.unmark_challenge_sent(*_leaf_key(sent))
        return challenge_id, open_tx

    def _expire_stale(self, challenge_id: int) -> None:
        """``expireChallenge`` for a challenge past its resolution window that stands in the way of
        ours; a revert (someone expired it first, or the node is a block behind) is left to the next
        lookup."""
        assert self.escalator is not None
        extra: dict[str, object] = {"challenge_id": challenge_id}
        try:
            self.escalator.expire_challenge(challenge_id)
            logger.warning("stale challenge of the leaf expired, to challenge it", extra=extra)
        except ContractRevertError as exc:
            logger.warning("stale challenge not expired", extra={**extra, "error": str(exc)})

    def _find_challenge_tx_quietly(self, challenge_id: int, opened_block: int) -> bytes | None:
        """The transaction that opened the challenge, or None (no finder, or the log not read: the
        challenge is adopted all the same)."""
        if self.find_challenge_tx is None:
            return None
        try:
            return self.find_challenge_tx(challenge_id, opened_block)
        except Exception as exc:
            extra = {"challenge_id": challenge_id, "error": redact_urls(str(exc))}
            logger.warning("challenge transaction not looked up", extra=extra)
            return None

    def _adopt(
        self, challenge_id: int, certificate: ag.Certificate, opened_block: int, open_tx: bytes | None = None
    ) -> None:
        """Record challenge ``challenge_id`` of ``certificate``'s leaf as OPEN: the resolver records
        how it ended, finishing the slashing of one that someone else upheld halfway. A row of the
        id for another challenge (another leaf, or one a reorg dropped) is from before a reorg that
        gave the id to this one: replaced (its leaf, if its challenge was still open, looked up again)."""
        row = ChallengeRow(
            challenge_id=challenge_id,
            state=ChallengeState.OPEN,
            batch_index=certificate.batch_header.batch_index,
            request_hash=bytes(certificate.request_hash),
            output_hash=bytes(certificate.output_hash),
            certificate=certificate.SerializeToString(deterministic=True),
            opened_block=opened_block,
            open_tx=open_tx,
            attempts=0,
        )
        if self.store.add_challenge(row):
            return
        recorded = self.store.get_challenge(challenge_id)
        if recorded is None or _is_same_challenge(recorded, row):
            return  # this challenge is recorded already
        if recorded.state == ChallengeState.OPEN:
            reason = "the challenge id names another leaf now (a reorg)"
            self.store.requeue_challenge(challenge_id, reason)
        self.store.replace_challenge(row)

    def _record(self, finding: Finding) -> Finding:
        """Write ``finding`` (final: the leaf is not checked again)."""
        self.store.add_finding(_finding_row(finding))
        return finding

    @staticmethod
    def _check_against_chain(batch: CertifiedBatch, certificate: ag.Certificate, request_hash: bytes) -> str:
        if bytes(certificate.request_hash) != request_hash:  # another leaf of the batch, say
            return "the certificate is for another request than the leaf asked about"
        if convert.batch_header_from_proto(certificate.batch_header) != batch.header:
            return "the certificate's batch header is not the certified one"
        if bytes(certificate.signatory_record_hash) != batch.signatory_record_hash:
            return "the certificate's signatory record hash is not the certified one"
        check = verify_certificate(certificate)
        return "; ".join(check.problems)


def _finding_row(finding: Finding) -> FindingRow:
    return FindingRow(
        batch_index=finding.batch_index,
        request_hash=finding.request_hash,
        output_hash=finding.output_hash,
        verdict=None if finding.verdict is None else int(finding.verdict),
        detail=redact_urls(finding.detail),  # an RPC error's URL may hold an API key
        challenge_id=finding.challenge_id,
        challenge_tx=finding.challenge_tx,
    )


def _is_same_challenge(recorded: ChallengeRow, row: ChallengeRow) -> bool:
    """Whether ``row`` is the challenge ``recorded`` already is: the same leaf, not given up. A row
    given up (EXPIRED: after a reorg, or a lagging node that showed nothing) is replaced by the one
    the chain names now; if that one has ended too, the resolver records it so at its next read."""
    leaf = (recorded.batch_index, bytes(recorded.request_hash), bytes(recorded.output_hash))
    if leaf != (row.batch_index, bytes(row.request_hash), bytes(row.output_hash)):
        return False
    return recorded.state != ChallengeState.EXPIRED


def _leaf_key(sent: SentChallengeRow) -> tuple[int, bytes, bytes]:
    return sent.batch_index, sent.request_hash, sent.output_hash


def describe_check(check: LeafCheck) -> str:
    """``no checker answered`` / ``only the batch's signers answered ...`` with each answer."""
    answers = ", ".join(
        f"0x{a.operator_id.hex()[:8]} ({'signer' if a.is_signer else 'non-signer'}): "
        + (a.verdict.name if a.verdict is not None else a.detail or "no answer")
        for a in check.answers
    )
    if compute_check_verdict(check) is None:
        return f"no checker answered [{answers}]"
    return f"only the batch's signers accepted it; the others did not answer [{answers}]"
