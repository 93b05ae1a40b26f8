// SPDX-License-Identifier: MIT
pragma solidity ^0.8.27;

import {CertifyFixture} from "../InferenceTaskManager.t.sol";
import {BN254} from "../../src/libraries/BN254.sol";
import {AvsMessages} from "../../src/libraries/AvsMessages.sol";
import {FaultManager} from "../../src/FaultManager.sol";
import {InsurancePool} from "../../src/InsurancePool.sol";
import {IFaultManagerTypes} from "../../src/interfaces/IFaultManager.sol";
import {IInsurancePoolTypes} from "../../src/interfaces/IInsurancePool.sol";
import {IOperatorRegistry} from "../../src/interfaces/IOperatorRegistry.sol";
import {IBLSSignatureChecker} from "../../src/interfaces/IBLSSignatureChecker.sol";
import {IAllocationManagerTypes, OperatorSet} from "../../src/interfaces/eigenlayer/IAllocationManager.sol";

/// @dev CertifyFixture (operators 1..8 with 10..80 ether in quorum 0; 1..4 also in quorum 1, half
///      their stake each) plus the insurance pool as redistribution recipient and the fault manager
///      as slasher. Escalation quorum: quorums 0 and 1 at 80%.
abstract contract FaultFixture is CertifyFixture {
    using BN254 for BN254.G1Point;

    uint64 internal constant EQUIVOCATION_WAD = 0.1e18;
    uint64 internal constant REJECTED_OUTPUT_WAD = 0.2e18;
    uint64 internal constant FRAUD_WAD = 0.5e18;
    uint96 internal constant BOND = 1 ether;
    uint32 internal constant RESOLUTION_WINDOW = 100;
    uint16 internal constant MAX_SLASHES = 64;
    address internal constant CHALLENGER = address(0xC4A11);
    address internal constant REQUESTER = address(0xAEE5);

    InsurancePool internal pool;
    FaultManager internal faults;
    bytes32[17] internal _opIds;

    function _recipient() internal virtual override returns (address) {
        pool = new InsurancePool(
            token, registry, taskManager, address(this), IInsurancePoolTypes.Config(100, 5_000, 1_000, 1_000)
        );
        return address(pool);
    }

    function setUp() public virtual override {
        super.setUp();
        for (uint256 sk = 1; sk <= 16; ++sk) {
            _opIds[sk] = BN254.hashG1Point(_g1(sk));
        }
        faults =
            new FaultManager(registry, taskManager, pool, token, address(this), _faultConfig(MAX_SLASHES), hex"0001");
        pool.setFaultManager(faults);
        registry.setSlasher(address(faults), true);
        token.mint(CHALLENGER, 100 ether);
        vm.prank(CHALLENGER);
        token.approve(address(faults), type(uint256).max);
        token.mint(REQUESTER, 100 ether);
        vm.prank(REQUESTER);
        token.approve(address(pool), type(uint256).max);
    }

    function _faultConfig(uint16 maxSlashes) internal pure returns (IFaultManagerTypes.Config memory) {
        return IFaultManagerTypes.Config(
            EQUIVOCATION_WAD, REJECTED_OUTPUT_WAD, FRAUD_WAD, 8_000, RESOLUTION_WINDOW, BOND, maxSlashes
        );
    }

    /// @dev Sets the fault manager's `maxSlashesPerCall`, the rest of its config as deployed.
    function _setMaxSlashes(uint16 maxSlashes) internal {
        faults.setConfig(_faultConfig(maxSlashes), hex"0001");
    }

    /// @dev Operator `sk` leaves the operator set of quorum 0 (through the core, as an operator would).
    function _leaveQuorum0(uint256 sk) internal {
        uint32[] memory sets = new uint32[](1);
        vm.prank(_operator(sk));
        core.deregisterFromOperatorSets(
            IAllocationManagerTypes.DeregisterParams(_operator(sk), address(registry), sets)
        );
    }

    /// @dev Operator `sk`'s stake allocated to quorum `q`'s operator set in the core (its one strategy).
    function _allocated(uint256 sk, uint8 q) internal view returns (uint256) {
        OperatorSet memory set = OperatorSet(address(registry), q);
        address[] memory ops = new address[](1);
        ops[0] = _operator(sk);
        return core.getAllocatedStake(set, ops, core.getStrategiesInOperatorSet(set))[0][0];
    }

    /// @dev Operator id of key `sk` (precomputed in setUp: a precompile call between
    ///      `vm.expectRevert` and the call under test would take the expectation).
    function _id(uint256 sk) internal view virtual returns (bytes32) {
        return _opIds[sk];
    }

    function _att(bytes32 req, bytes32 out, AvsMessages.Verdict v)
        internal
        pure
        returns (AvsMessages.Attestation memory)
    {
        return AvsMessages.Attestation(req, out, v);
    }

    function _signed(uint256 sk, AvsMessages.Attestation memory a)
        internal
        view
        returns (IFaultManagerTypes.SignedAttestation memory)
    {
        return IFaultManagerTypes.SignedAttestation(a, BN254.hashToG1(faults.attestationDigest(a)).scalar_mul(sk));
    }

    /// @dev A certificate on `digest` by every operator of `quorums` except `nonSigners`, at the last block.
    function _cert(bytes32 digest, bytes memory quorums, uint256[] memory nonSigners)
        internal
        view
        returns (IBLSSignatureChecker.NonSignerStakesAndSignature memory)
    {
        AvsMessages.BatchHeader memory h = _header(0, bytes32(0), quorums);
        uint256[] memory signers = _complement(nonSigners, _members(quorums));
        if (quorums.length == 2) signers = _withMultiplicity(signers);
        return _params(digest, h, signers, _sortById(nonSigners));
    }

    function _verdictDigest(bytes32 req, bytes32 out, AvsMessages.Verdict v) internal view returns (bytes32) {
        return faults.attestationDigest(_att(req, out, v));
    }

    /// @dev The insured request of REQUESTER with nonce `nonce`, and its hash.
    function _request(uint256 nonce) internal view returns (AvsMessages.InferenceRequest memory r, bytes32 hash) {
        r = AvsMessages.InferenceRequest(
            keccak256("model"), keccak256("prompt"), 0, 0, 1_000_000, 7, 64, bytes32(0), REQUESTER, nonce
        );
        hash = AvsMessages.digest(taskManager.domainSeparator(), AvsMessages.hash(r));
    }

    /// @dev A two-leaf batch {(req, out), (other, other)}: header, and the proof of (req, out).
    function _twoLeafRoot(bytes32 req, bytes32 out) internal pure returns (bytes32 root, bytes32[] memory proof) {
        bytes32 leaf = AvsMessages.leafHash(req, out);
        bytes32 sibling = AvsMessages.leafHash(keccak256("other req"), keccak256("other out"));
        root = leaf < sibling ? keccak256(abi.encode(leaf, sibling)) : keccak256(abi.encode(sibling, leaf));
        proof = new bytes32[](1);
        proof[0] = sibling;
    }

    /// @dev Certifies batch `index` (quorum 0) holding (req, out), with `nonSigners`; returns header,
    ///      signatory record hash and leaf proof.
    function _certifyLeaf(uint64 index, bytes32 req, bytes32 out, uint256[] memory nonSigners)
        internal
        returns (AvsMessages.BatchHeader memory h, bytes32 record, bytes32[] memory proof)
    {
        bytes32 root;
        (root, proof) = _twoLeafRoot(req, out);
        h = _header(index, root, hex"00");
        taskManager.certifyBatch(h, _sigs(h, nonSigners));
        uint256[] memory sorted = _sortById(nonSigners);
        bytes32[] memory ids = new bytes32[](sorted.length);
        for (uint256 i; i < sorted.length; ++i) {
            ids[i] = _id(sorted[i]);
        }
        record = keccak256(abi.encodePacked(h.referenceBlock, ids));
    }

    /// @dev The BatchSigners of batch `h` certified with `nonSigners` (every other member signed).
    function _batchSigners(AvsMessages.BatchHeader memory h, uint256[] memory nonSigners)
        internal
        view
        returns (IFaultManagerTypes.BatchSigners memory)
    {
        return _batchSigners(h, nonSigners, _complement(_sortById(nonSigners), _members(h.quorumNumbers)));
    }

    /// @dev The BatchSigners of batch `h` certified by `signers` with `nonSigners`.
    function _batchSigners(AvsMessages.BatchHeader memory h, uint256[] memory nonSigners, uint256[] memory signers)
        internal
        view
        returns (IFaultManagerTypes.BatchSigners memory s)
    {
        s.header = h;
        s.nonSignerIds = _ids(_sortById(nonSigners));
        s.signerIds = _ids(_sortById(signers));
        s.nonSignerBitmapIndices =
        registry.getCheckSignaturesIndices(h.referenceBlock, h.quorumNumbers, s.nonSignerIds)
        .nonSignerQuorumBitmapIndices;
        IOperatorRegistry.CheckSignaturesIndices memory idx =
            registry.getCheckSignaturesIndices(h.referenceBlock, h.quorumNumbers, s.signerIds);
        s.signerBitmapIndices = idx.nonSignerQuorumBitmapIndices;
        s.quorumApkIndices = idx.quorumApkIndices;
    }

    function _ids(uint256[] memory sks) internal view returns (bytes32[] memory ids) {
        ids = new bytes32[](sks.length);
        for (uint256 i; i < sks.length; ++i) {
            ids[i] = _id(sks[i]);
        }
    }

    function _noSigners() internal pure returns (IFaultManagerTypes.BatchSigners memory s) {
        return s;
    }
}
