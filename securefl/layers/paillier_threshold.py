"""``paillier-threshold``: a Paillier secure sum whose secret key exists only as t-of-l shares.

Parties pack and encrypt their quantized vectors under a standard Paillier public key (g = n + 1,
public-key encryption: no party knows p or q), with the contribution pads and counter slot of
``paillier``; the aggregator multiplies the ciphertexts. No party can decrypt alone: t key-share
holders each compute decryption shares of the sum, prove them correct, and seal them under a key
only the parties hold; a combiner party checks the proofs, combines t valid shares, decrypts,
fuses and seals the next global model; a second party verifies the combiner's decryption with a
cheap batch check and seals the same record. The aggregator sees ciphertexts and sealed bytes only.

Phases: ``encrypt`` → ``attest`` (every contributor proves, under its signature, that it knows
what it contributed; the round fails before anything is decrypted if one does not, and those sit
out the next rounds) → ``acknowledge`` (each contributor signs that the attested sum may now be
decrypted, and from then on attests no other sum of the same update) → ``share`` (holders check
every attestation and a quorum of acknowledgements, then share) → ``combine`` (a decryptor) →
``verify`` (t − 1 verifiers), repeated with fresh combiners until a decryption is confirmed.
Keys come from a ceremony (``securefl keys paillier-threshold``): one
share file per party, a public file for the aggregator. Specification:
``protocols/paillier-threshold.md``; arithmetic: ``securefl/crypto/threshold_paillier.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securefl.crypto import attestation, channel, paillier, prg, signing
from securefl.crypto import threshold_paillier as tp
from securefl.crypto.keyfiles import private_directory, read_private, write_private
from securefl.crypto.packing import Packing
from securefl.errors import ConfigError, ProtocolError, RoundFailed, WireError
from securefl.layers import ack_log
from securefl.layers import paillier as paillier_layer
from securefl.layers.ack_log import AckLog
from securefl.layers.base import (
    ImpossibleSum,
    Provider,
    RoundContext,
    SealedModel,
    SecureSum,
    SitOuts,
    StackContext,
    SumAggregator,
    SumParty,
    Transform,
)
from securefl.layers.paillier import KeyMaterial, PaillierScheme, _split
from securefl.layers.quantize import Quantize
from securefl.layers.shared_key import (
    _ABSTAIN,
    ENCRYPT,
    _contributor_list,
    _model_aad,
    _Party,
    _record_header,
    _seal_model,
    model_digest,
    sealed_record_size,
    sum_digest,
)
from securefl.wire import decode_record, encode_record

ATTEST, ACK, SHARE, COMBINE, VERIFY = "attest", "acknowledge", "share", "combine", "verify"
LATE_ACK_ROUNDS = 3  # rounds spent gathering late acknowledgements of a sum short of its quorum
MAX_ATTEMPTS = 8


def attempt_phases(public: tp.ThresholdPublicKey) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The decryption attempts' phases: ``combine``, ``verify``, ``combine-2``, ``verify-2``, … —
    2t + 1 attempts, no more than there are holders (nor 8). The ones after a confirmed decryption
    are skipped (``finished``), so an honest round pays for one."""
    count = max(1, min(2 * public.threshold + 1, len(public.holders), MAX_ATTEMPTS))
    suffix = ["", *(f"-{i}" for i in range(2, count + 1))]
    return tuple(COMBINE + x for x in suffix), tuple(VERIFY + x for x in suffix)


PUBLIC_FILE = "public.json"
_PARALLEL_MIN = 64
_HOLDER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")

log = logging.getLogger(__name__)


def share_file_name(holder: str) -> str:
    return f"share-{holder}.json"


# --- key ceremony and files ------------------------------------------------------------------------


def key_ceremony(
    out: str | Path, parties: list[str], threshold: int, bits: int = paillier.MIN_KEY_BITS
) -> dict:
    """The dealer outside the federation: generates, writes DIR/public.json and one 0600
    DIR/share-<party>.json per party (write_private creates it 0600 before any byte is written),
    and drops p, q, d and the polynomial when this function returns (nothing else references them;
    Python cannot scrub memory: run it on an offline machine, see the spec's ceremony)."""
    for name in parties:
        if not isinstance(name, str) or not _HOLDER_NAME.match(name):
            raise ConfigError(f"party name {name!r} cannot name a share file (letters, digits, _.:-)")
    # Everything checkable is checked before a directory or a prime exists.
    paillier.check_key_bits(bits)
    if not 1 <= len(parties) <= tp.MAX_HOLDERS or len(set(parties)) != len(parties):
        raise ConfigError(f"a threshold key has 1 to {tp.MAX_HOLDERS} distinct holders, got {parties!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not 1 <= threshold <= len(parties):
        raise ConfigError(f"the threshold must be between 1 and {len(parties)} holders, got {threshold!r}")
    out = private_directory(out, tighten=True)  # 0700 (an existing one tightened) before any secret
    paths = [out / PUBLIC_FILE, *(out / share_file_name(name) for name in parties)]
    taken = [str(path) for path in paths if os.path.lexists(path)]
    if taken:
        raise ConfigError(f"{', '.join(taken)} exist: key files are never overwritten (move them away first)")
    dealt = tp.deal(bits, parties, threshold)
    public_path = paths[0]
    with open(public_path, "x") as handle:  # exclusive: never into a file or symlink already there
        handle.write(json.dumps(dealt.public.to_json(), indent=1))
    files = []
    for name in parties:
        document = json.dumps(dealt.shares[name].to_json(), indent=1).encode()
        files.append(str(write_private(out / share_file_name(name), document, overwrite=False)))
    fingerprint = dealt.public.fingerprint()
    del dealt
    return {"public": str(public_path), "shares": files, "threshold": threshold, "fingerprint": fingerprint}


def demo_stack(parties: list[str], threshold: int | None = None, bits: int = paillier.MIN_KEY_BITS) -> list:
    """The stack of the demo and of ``securefl bench``: clip 10, quantize 16, and a threshold key
    dealt to ``parties`` (t = 2 by default, t + 1 holders asked) in a fresh private temporary
    directory, removed when the process exits — the dealer is this process, which is fine for a
    simulation and nothing else."""
    import atexit
    import shutil
    import tempfile

    from securefl.layers.clip import Clip

    keys = tempfile.mkdtemp(prefix="securefl-threshold-keys-")
    atexit.register(shutil.rmtree, keys, ignore_errors=True)
    t = threshold or min(2, len(parties))
    key_ceremony(keys, list(parties), t, bits)
    # t + 1 holders asked: one may drop or send bad shares; asking every holder multiplies the work.
    return [Clip(10.0), Quantize(16), PaillierThreshold(key_dir=keys, share_holders=min(t + 1, len(parties)))]


def _read_json(path: Path, what: str, private: bool = False) -> Any:
    try:
        data = read_private(path, what) if private else path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{what} {str(path)!r} does not exist; create it with 'securefl keys paillier-threshold'"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{what} {str(path)!r} cannot be read: {exc.strerror}") from None
    try:
        return json.loads(data)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and integers over Python's digit limit; RecursionError,
        # nesting too deep: a damaged or hostile file is a clear error, never a traceback.
        raise ConfigError(f"{what} {str(path)!r} is not readable JSON: {type(exc).__name__}: {exc}") from None


def load_public(path: str | Path) -> tp.ThresholdPublicKey:
    """The public key from a public file or from any share file."""
    data = _read_json(Path(path), "threshold Paillier key file")
    if isinstance(data, dict) and data.get("kind") == tp.SHARE_KIND:
        data = data.get("public")
    return tp.ThresholdPublicKey.from_json(data)


def load_share(path: str | Path) -> tp.KeyShare:
    return tp.KeyShare.from_json(_read_json(Path(path), "threshold Paillier share file", private=True))


# --- parallel work -----------------------------------------------------------------------------------

_POOLS: dict[int, ProcessPoolExecutor] = {}


def _pool(workers: int) -> ProcessPoolExecutor:
    if workers not in _POOLS:
        _POOLS[workers] = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
    return _POOLS[workers]


def _chunks(items: list, parts: int) -> list[list]:
    size = max(1, -(-len(items) // parts))
    return [items[i : i + size] for i in range(0, len(items), size)]


def compute_shares(key: tp.KeyShare, ciphertexts: list[int], workers: int) -> list[int]:
    """This holder's decryption shares of every ciphertext, on ``workers`` processes."""
    if workers <= 1 or len(ciphertexts) < _PARALLEL_MIN:
        return tp.share_exponentiation(key.public.n, key.exponent, ciphertexts)
    chunks = _chunks(ciphertexts, 4 * workers)
    pool = _pool(workers)
    results = pool.map(
        tp.share_exponentiation, [key.public.n] * len(chunks), [key.exponent] * len(chunks), chunks
    )
    return [y for part in results for y in part]


def lift_all(
    public: tp.ThresholdPublicKey, ciphertexts: list[int], roots: list[int], workers: int
) -> list[int]:
    if workers <= 1 or len(ciphertexts) < _PARALLEL_MIN:
        return tp.lift_decrypt(public.n, public.delta, ciphertexts, roots)
    cs, ws = _chunks(ciphertexts, 4 * workers), _chunks(roots, 4 * workers)
    results = _pool(workers).map(tp.lift_decrypt, [public.n] * len(cs), [public.delta] * len(cs), cs, ws)
    return [m for part in results for m in part]


# --- the scheme: paillier's packing, pads and product, with a threshold key ------------------------


class ThresholdScheme(PaillierScheme):
    """Encryption, pads and combination of ``paillier`` (public-key encryption: nobody holds p, q);
    decryption is the threshold protocol below, never this class's."""

    name = "paillier-threshold"

    def __init__(self, key_bits: int, workers: int) -> None:
        super().__init__(key_bits, "public", workers)
        # Each party's openings of its latest contribution (session, round, plaintexts, exponent
        # seed), kept to attest it (``securefl.crypto.attestation``); taken by the party object.
        self.openings: dict[str, tuple[str, int, list[int], bytes]] = {}

    @staticmethod
    def base(material: tp.KeyShare) -> KeyMaterial:
        return KeyMaterial(material.public.paillier, material.model_key, None)

    def encrypt(self, material: Any, vector: np.ndarray, ctx: RoundContext, party: str) -> bytes:
        """As ``paillier``'s public-key encryption, with the DJN exponents x_j drawn from a fresh
        32-byte CSPRNG seed that the party keeps, so that it can later prove it knows what it sent."""
        base = self.base(material)
        plaintexts = self.padded_plaintexts(base, vector, ctx, party)
        seed = secrets.token_bytes(32)
        pairs = list(zip(plaintexts, djn_exponents(seed, len(plaintexts), base.public), strict=True))
        batches = _split(pairs, 4 * self.workers)
        data = b"".join(self._run(base, "public", _encrypt_known_chunk, batches, len(pairs)))
        self.openings[party] = (ctx.session, ctx.round, plaintexts, seed)
        return encode_record(b"PENr", {"count": len(plaintexts)}, {"ciphertexts": data})

    def model_key(self, material: Any) -> bytes:
        return material.model_key

    def fingerprint(self, material: Any) -> str:
        return material.public.fingerprint()

    def decrypt(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise ProtocolError("threshold Paillier has no single-key decryption")

    def unpad_and_unpack(
        self, material: tp.KeyShare, plaintexts: list[int], contributors: tuple[str, ...], ctx: RoundContext
    ) -> np.ndarray:
        """Remove exactly the named contributors' pads, unpack, check the counter (as ``paillier``)."""
        base = self.base(material)
        n, count = base.public.n, len(plaintexts)
        padding = self.pad_total(base, ctx, contributors, count)
        plaintexts = [(m - r) % n for m, r in zip(plaintexts, padding, strict=True)]
        number = len(contributors)
        try:
            total = self.packing(base.public.plaintext_bits).unpack(plaintexts, ctx.vector_size + 1, number)
        except ProtocolError as exc:
            raise ImpossibleSum(
                f"the decrypted Paillier sum cannot come from honest parties: {exc}"
            ) from None
        if int(total[-1]) != number:
            raise ImpossibleSum(
                f"the Paillier sum cannot come from {number} honest parties: its counter slot disagrees"
            )
        return total[:-1].view(np.uint64)


def djn_exponents(seed: bytes, count: int, public: paillier.PublicKey) -> list[int]:
    """The short DJN exponents x_j (⌈|n|/2⌉ bits, as ``PublicEncryptor``) from an AES-CTR stream."""
    bits = (public.bits + 1) // 2
    width = (bits + 7) // 8
    stream = prg.expand(seed, count * width, np.uint8).tobytes()
    mask = (1 << bits) - 1
    return [int.from_bytes(stream[i * width : (i + 1) * width], "big") & mask for i in range(count)]


def _encrypt_known_chunk(pairs: list[tuple[int, int]]) -> bytes:
    """Worker: (plaintext, exponent) pairs encrypted with ``paillier``'s per-process encryptor."""
    width, enc = paillier_layer._worker["width"], paillier_layer._worker["enc"]
    return b"".join(enc.encrypt_with(m, x).to_bytes(width, "big") for m, x in pairs)


def attestation_size(public: tp.ThresholdPublicKey, count: int) -> int:
    """An attestation (``securefl.crypto.attestation``) and its sender's Ed25519 signature."""
    return attestation.size(public.paillier, count) + signing.SIGNATURE_BYTES


def _attestation_message(ctx: bytes, blob: bytes) -> bytes:
    return tp.DOMAIN + b"/attestation" + tp.field(ctx) + tp.field(blob)


def sign_attestation(share: tp.KeyShare, ctx: bytes, blob: bytes) -> bytes:
    key = Ed25519PrivateKey.from_private_bytes(share.signing_key)
    return blob + signing.sign(key, _attestation_message(ctx, blob))


def check_attestation(
    public: tp.ThresholdPublicKey, party: str, signed: bytes, ctx: bytes, count: int
) -> int:
    """The D that ``party`` attested under ``ctx``: its signature (so nobody attests in its name) and
    the proof of plaintext knowledge must hold; else ProtocolError/WireError."""
    if len(signed) != attestation_size(public, count):
        raise WireError(f"an attestation of this round is {attestation_size(public, count)} bytes")
    blob, signature = signed[: -signing.SIGNATURE_BYTES], signed[-signing.SIGNATURE_BYTES :]
    signing.verify(public.signing[public.index(party) - 1], signature, _attestation_message(ctx, blob), party)
    return attestation.check(public.paillier, blob, ctx, count)


def quorum(invited: int, threshold: int) -> int:
    """Fewest contributors of a sum: more than (invited + t − 1)/2, so that two sums of one round
    share more than t − 1 contributors, hence an honest one, which attests one sum a round — an
    aggregator cannot split a round's honest contributors into sums decrypted apart (fourth
    attacker, 4)."""
    return (invited + threshold - 1) // 2 + 1


def _ack_message(
    session: str, round_: int, party: str, contributors: tuple[str, ...], digest: str, base: str
) -> bytes:
    """What a contributor signs in ``acknowledge``: this sum (round, contributors, digest) of updates
    trained from the model ``base`` (its SHA-256, hex) may be decrypted, and this party attests no
    other sum of the update it contributed to it."""
    return (
        tp.DOMAIN
        + b"/acknowledgement"
        + tp.context(session, round_, party, digest)
        + tp.field(base.encode())
        + b"".join(tp.field(c.encode()) for c in contributors)
    )


def sign_ack(
    share: tp.KeyShare, session: str, round_: int, contributors: tuple[str, ...], digest: str, base: str
) -> bytes:
    key = Ed25519PrivateKey.from_private_bytes(share.signing_key)
    return signing.sign(key, _ack_message(session, round_, share.holder, contributors, digest, base))


def check_acks(
    public: tp.ThresholdPublicKey,
    session: str,
    round_: int,
    contributors: tuple[str, ...],
    digest: str,
    ackers: Any,
    base: Any,
    blob: bytes,
) -> tuple[str, ...]:
    """The contributors whose acknowledgements of this sum ``blob`` carries (one signature each, in
    the order of ``ackers``, all on updates trained from the model ``base``): each must verify, and
    more than (contributors + t − 1)/2 of them must be there — so that more than half of the sum's
    honest contributors have bound themselves to it before anyone may decrypt it (spec,
    "Acknowledgements"). Else ProtocolError/WireError."""
    if (
        not isinstance(ackers, list)
        or any(not isinstance(a, str) or a not in contributors for a in ackers)
        or ackers != sorted(set(ackers))
    ):
        raise ProtocolError("the acknowledgers must be distinct contributors of the sum, sorted")
    if not isinstance(base, str) or not re.fullmatch(r"[0-9a-f]{64}", base):
        raise ProtocolError("the acknowledged base is not a SHA-256 digest in lowercase hex")
    if len(blob) != signing.SIGNATURE_BYTES * len(ackers):
        raise WireError("the share request does not carry one acknowledgement per acknowledger")
    needed = quorum(len(contributors), public.threshold)
    if len(ackers) < needed:
        raise ProtocolError(
            f"only {len(ackers)} of the sum's {len(contributors)} contributors acknowledged it, {needed} "
            "are needed before it may be decrypted"
        )
    _verify_each(
        public, ackers, blob, lambda party: _ack_message(session, round_, party, contributors, digest, base)
    )
    return tuple(ackers)


def _verify_each(
    public: tp.ThresholdPublicKey, signers: list[str], blob: bytes, message: Callable[[str], bytes]
) -> None:
    """Each signer's Ed25519 signature (``blob``: one per signer, in order) on ``message(signer)``,
    under the signing key the ceremony dealt it; ProtocolError naming the first that fails."""
    width = signing.SIGNATURE_BYTES
    for k, signer in enumerate(signers):
        signing.verify(
            public.signing[public.index(signer) - 1],
            blob[k * width : (k + 1) * width],
            message(signer),
            signer,
        )


def _model_digest(vector: np.ndarray | None) -> str:
    """A model's content as the acknowledgements name it: SHA-256 of its float64 LE values, hex."""
    return "" if vector is None else model_digest(vector).hex()


def _record_message(record: bytes) -> bytes:
    return tp.DOMAIN + b"/record" + tp.field(hashlib.sha256(record).digest())


def sign_record(share: tp.KeyShare, record: bytes) -> bytes:
    """A combiner's signature on the sealed record it made (decryptor or verifier)."""
    return signing.sign(Ed25519PrivateKey.from_private_bytes(share.signing_key), _record_message(record))


def countersigned_record(record: bytes, signatures: dict[str, bytes]) -> bytes:
    """The global model as released: the sealed record and the signatures of the combiners that
    confirmed it (``TSGM``)."""
    signers = sorted(signatures)
    return encode_record(
        b"TSGM",
        {"signers": signers},
        {"record": record, "signatures": b"".join(signatures[s] for s in signers)},
    )


def open_countersigned(public: tp.ThresholdPublicKey, sealed: bytes) -> bytes:
    """The record inside a released model, once t distinct holders' signatures on it verify: a
    record sealed by t − 1 colluders alone (they all hold the model key) is refused."""
    header, parts = decode_record(sealed, b"TSGM", {"signers": list}, ("record", "signatures"))
    signers = header["signers"]
    if (
        any(not isinstance(s, str) or s not in public.holders for s in signers)
        or signers != sorted(set(signers))
        or len(parts["signatures"]) != signing.SIGNATURE_BYTES * len(signers)
    ):
        raise WireError("a released model's signers must be distinct holders, sorted, one signature each")
    if len(signers) < public.threshold:
        raise ProtocolError(
            f"a released model signed by {len(signers)} combiners, {public.threshold} are needed: refused"
        )
    message = _record_message(parts["record"])
    _verify_each(public, signers, parts["signatures"], lambda _signer: message)
    return parts["record"]


def _exposed_contributors(names: Any, ctx: RoundContext, public: tp.ThresholdPublicKey) -> tuple[str, ...]:
    """The contributors of an earlier round's exposed sum: distinct holders of the key, at least this
    party's min_parties of them (its own round's invitation is not known to a party outside it)."""
    if (
        not isinstance(names, list)
        or any(not isinstance(n, str) or n not in public.holders for n in names)
        or len(set(names)) != len(names)
        or names != sorted(names)
    ):
        raise ProtocolError("an exposed sum names distinct holders of the key, sorted")
    if len(names) < max(1, ctx.min_parties):
        raise ProtocolError(f"an exposed sum of {len(names)} contributors is below min_parties")
    return tuple(names)


def _split_ciphertexts(blob: bytes, public: tp.ThresholdPublicKey, count: int) -> list[int]:
    width = public.paillier.ciphertext_bytes
    if len(blob) != count * width:
        raise WireError(
            f"the encrypted sum must be {count} ciphertexts of {width} bytes, got {len(blob)} bytes"
        )
    values = [int.from_bytes(blob[i : i + width], "big") for i in range(0, len(blob), width)]
    public.paillier.check_ciphertexts(values)
    return values


def _share_key(model_key: bytes) -> bytes:
    return hmac.new(model_key, b"securefl/paillier-threshold/share-key", hashlib.sha256).digest()


def _share_aad(ctx: RoundContext, holder: str, contributors: list[str], digest: str, label: bytes) -> bytes:
    return (
        tp.DOMAIN
        + tp.field(label)
        + tp.context(ctx.session, ctx.round, holder, digest)
        + b"".join(tp.field(c.encode()) for c in contributors)
    )


def _claim_size(public: tp.ThresholdPublicKey, count: int) -> int:
    return channel.sealed_size(2 * count * public.n_bytes)


def _share_size(public: tp.ThresholdPublicKey, count: int) -> int:
    return channel.sealed_size(count * public.n_bytes + public.proof_bytes)


# --- the layer ---------------------------------------------------------------------------------------


class PaillierThreshold(SecureSum):
    """Secure sum under a threshold Paillier key: any ``threshold`` of the key's holders decrypt.

    ``key_dir``: the ceremony's output (public.json and share-<party>.json; in-process federations);
    ``key_file``: one party's share file, or the public file for an aggregator (deployments).
    ``workers``: processes for encryption, shares and decryption (default: all cores).
    ``share_holders``: how many contributing holders are asked for decryption shares (default: all;
    ``threshold`` gives the least work, more tolerate dropouts and bad shares within the round).
    """

    name = "paillier-threshold"
    accepts_floats = False
    modulus_bits = 64
    fuses_on_parties = True

    def __init__(
        self,
        key_dir: str | None = None,
        key_file: str | None = None,
        workers: int | None = None,
        share_holders: int | None = None,
    ) -> None:
        if (key_dir is None) == (key_file is None):
            raise ConfigError(
                "paillier-threshold needs key_dir (the ceremony's directory) or key_file (a share or public "
                "file): create them with 'securefl keys paillier-threshold'"
            )
        self.key_dir = Path(key_dir) if key_dir is not None else None
        self.key_file = Path(key_file) if key_file is not None else None
        self.public = load_public(self.key_dir / PUBLIC_FILE if self.key_dir is not None else self.key_file)
        paillier.check_key_bits(self.public.bits)
        if not self.public.signing:
            raise ConfigError(
                "this threshold key has no signing keys, which attest contributions (a key from an older "
                "ceremony): run 'securefl keys paillier-threshold' again"
            )
        self.workers = workers or os.cpu_count() or 1
        if share_holders is not None and (
            isinstance(share_holders, bool)
            or not isinstance(share_holders, int)
            or not self.public.threshold <= share_holders
        ):
            raise ConfigError(f"share_holders must be at least the threshold {self.public.threshold}")
        self.share_holders = share_holders
        self.scheme = ThresholdScheme(self.public.bits, self.workers)

    @property
    def threshold(self) -> int:
        return self.public.threshold

    def require_holders(self, parties: list[str]) -> None:
        """Deployments: every allowlisted party (a certificate's party id) must hold the share named
        after it; a party process refuses a share file that names anyone else (``party``)."""
        missing = sorted(set(parties) - set(self.public.holders))
        if missing:
            raise ConfigError(
                f"paillier-threshold: {', '.join(missing)} hold no share of this key (its holders: "
                f"{', '.join(self.public.holders)}); run the key ceremony for the federation's parties"
            )

    def validate(self, ctx: StackContext, transforms: list[Transform]) -> None:
        quantizers = [t for t in transforms if isinstance(t, Quantize)]
        if not quantizers:
            return
        self.scheme.value_bits = quantizers[0].bits
        self.scheme.max_parties = ctx.max_parties
        self.packing(self.public.bits - 1)

    def packing(self, plaintext_bits: int) -> Packing:
        return self.scheme.packing(plaintext_bits)

    def aggregator(self) -> SumAggregator:
        return _Aggregator(self.scheme, self.public, self.share_holders)

    def party(self, party_id: str) -> SumParty:
        path = self.key_dir / share_file_name(party_id) if self.key_dir is not None else self.key_file
        share = load_share(path)
        if share.holder != party_id:
            raise ConfigError(
                f"the share file {str(path)!r} belongs to {share.holder!r}, not to {party_id!r}"
            )
        if share.public != self.public:
            raise ConfigError(f"the share file {str(path)!r} is for another threshold key")
        return _ThresholdParty(self.scheme, party_id, share, self.workers, AckLog(f"{path}.acks"))

    def __repr__(self) -> str:
        return (
            f"PaillierThreshold(bits={self.public.bits}, threshold={self.threshold}, "
            f"holders={len(self.public.holders)}, workers={self.workers})"
        )


class _Aggregator(SumAggregator):
    """Public key, ciphertexts and sealed bytes only. Checks each payload's form and size on arrival;
    the shares' proofs are checked by the combining parties (the shares are sealed to them)."""

    def __init__(
        self, scheme: ThresholdScheme, public: tp.ThresholdPublicKey, share_holders: int | None
    ) -> None:
        self.scheme = scheme
        self.public = public
        self.share_holders = share_holders
        self.distrusted: set[str] = set()  # holders whose shares two combiners found wrong
        self.combine_phases, self.verify_phases = attempt_phases(public)
        self.barred: set[str] = set()  # combiners caught lying: never a combiner again
        self.exposed: dict | None = None  # a sum whose shares went out without a model (above)
        self.excluded: set[str] = set()  # contributors caught lying in an attestation: never summed
        self.sit_outs = SitOuts()  # contributors that missed attestations in a row
        self.avoid: set[str] = set()  # combiners that were silent or disagreed: no role while others can
        # Contributors that acknowledged a sum which then gathered too few acknowledgements to be
        # decrypted: they attest no other sum of the same update, so they are not summed until a
        # record is released (spec, "Acknowledgements").
        self.waiting: set[str] = set()

    def phases(self, ctx: RoundContext) -> tuple[str, ...]:
        attempts = (p for pair in zip(self.combine_phases, self.verify_phases, strict=True) for p in pair)
        return (ENCRYPT, ATTEST, ACK, SHARE, *attempts)

    def start_round(self, ctx: RoundContext) -> None:
        # A round whose sum a quorum acknowledged (so it may have been decrypted: its shares may be
        # out) and that released no record left its sum exposed: the next rounds complete THAT sum
        # (spec, "Exposed sums") until one releases its record. Its acknowledgers attest no other sum
        # of their update meanwhile. A sum acknowledged by some but fewer than its quorum was never
        # shared: the next rounds ask its other contributors to acknowledge it late (LATE_ACK_ROUNDS
        # at most), then give it up — its acknowledgers wait (are not summed) until a release.
        if getattr(self, "sealed", None) is not None:
            self.exposed = None
            self.waiting = set()
        elif self.exposed is not None:
            self.exposed["acks"].update(self.acks)
            self.exposed["tries"] += 1
            if (
                len(self.exposed["acks"]) < quorum(len(self.exposed["named"]), self.public.threshold)
                and self.exposed["tries"] >= LATE_ACK_ROUNDS
            ):
                self.waiting |= set(self.exposed["acks"])
                self.exposed = None
        elif getattr(self, "acks", None):
            self.exposed = {
                "round": self.ctx.round,
                "named": list(self._named),
                "sum": self._sum,
                "digest": self._digest,
                "attestations": dict(self.attestations),
                "acks": dict(self.acks),
                "tries": 0,
            }
        self.shares_out = False
        self.acks: dict[str, tuple[str, bytes]] = {}  # acknowledger -> (base, signature)
        self.completing = self.exposed is not None
        self.of_round = self.exposed["round"] if self.completing else ctx.round
        self.ctx = ctx
        self.count = self.scheme._count(ctx)
        self.combined = None
        self.pool: list[str] = []  # the parties combiners are drawn from
        self.contributors_: set[str] = set()
        self.payloads: dict[str, bytes] = {}  # each contribution, to find who attested a lie
        self.attested: dict[str, int] = {}  # contributor -> its attested D for the current sum
        self.attestations: dict[str, bytes] = {}
        self.asked: list[str] = []
        self.sealed_shares: dict[str, bytes] = {}
        self.decryptor: str | None = None  # the first attempt's
        self.role: dict[str, list[str]] = {}  # attempt phase -> the combiners asked in it
        self.used: set[str] = set()  # contributors that already had a role this round
        self.pending: str | None = None  # a decryptor whose claim awaits a verifier
        self.decrypted_by: list[str] = []  # decryptors that reported a decryption
        self.disputes: list[tuple[str, str]] = []  # (decryptor, verifier) that disagreed
        self.shorts: list[tuple[str, list[str]]] = []  # (decryptor, holders it named bad)
        self.failures: list[str] = []
        # Each attempt phase's answer from its role: (status, bad holders, record, claim).
        self.replies: dict[tuple[str, str], tuple[str, list[str], bytes, bytes]] = {}
        self.claims: dict[str, tuple[str, list[str], bytes, bytes]] = {}  # decryptor -> its sealed answer
        self.verified: dict[str, set[str]] = {}  # decryptor -> the verifiers its claim was sent to
        self.agreed: dict[str, set[str]] = {}  # decryptor -> the verifiers that confirmed its claim
        self.failed: set[str] = set()  # combiners that dropped or answered nothing valid this round
        self._sum: bytes | None = None
        self._digest = ""
        self._named: list[str] = []
        self.sealed: bytes | None = None
        self.signatures: dict[bytes, dict[str, bytes]] = {}  # record digest -> combiner -> signature
        self.culprits_: dict[str, str] = {}
        self.abstained: dict[str, str] = {}

    def max_reply_bytes(self, phase: str) -> int:
        if phase == ENCRYPT:
            return self.scheme.max_encrypt_bytes(self.ctx)
        if phase == ATTEST:
            return attestation_size(self.public, self.count) + 4096
        if phase == ACK:
            return signing.SIGNATURE_BYTES + 4096
        if phase == SHARE:
            return _share_size(self.public, self.count) + 4096
        return (
            sealed_record_size(self.ctx.vector_size)
            + _claim_size(self.public, self.count)
            + signing.SIGNATURE_BYTES
            + 8192
        )

    def _form_sum(self, contributors: set[str]) -> None:
        """The sum of exactly ``contributors``' ciphertexts, its digest and their sorted names."""
        if contributors != set(self.payloads) or self.combined is None:
            self.combined = self.scheme.combiner(self.public.paillier, self.ctx)
            for party in sorted(contributors):
                self.combined.add(self.payloads[party])
        self.contributors_ = set(contributors)
        self._named = sorted(contributors)
        self._sum = self.combined.payload()
        self._digest = sum_digest(self._sum)
        self.attested, self.attestations = {}, {}

    def _ciphertexts(self, party: str) -> list[int]:
        _, parts = decode_record(self.payloads[party], b"PENr", {"count": int}, ("ciphertexts",))
        return _split_ciphertexts(parts["ciphertexts"], self.public, self.count)

    def _attest_context(self, party: str) -> bytes:
        return attestation.context(self.ctx.session, self.ctx.round, party, self._named, self._digest)

    def request(self, phase: str, party: str) -> bytes:
        if phase == ATTEST:
            if party not in self.contributors_ or self.completing:
                return encode_record(b"TATq", {"contributors": [], "sum": ""}, {})
            return encode_record(b"TATq", {"contributors": self._named, "sum": self._digest}, {})
        if phase == ACK:
            if party not in self._ack_asked():
                return encode_record(b"TAKq", {"contributors": [], "sum": "", "of_round": self.of_round}, {})
            return encode_record(
                b"TAKq", {"contributors": self._named, "sum": self._digest, "of_round": self.of_round}, {}
            )
        if phase == SHARE:
            if party not in self.asked:
                return encode_record(
                    b"TSHq",
                    {"contributors": [], "of_round": self.of_round, "ackers": [], "base": ""},
                    {"sum": b"", "attestations": b"", "acks": b""},
                )
            ackers, base, blob = self._ack_fields()
            return encode_record(
                b"TSHq",
                {"contributors": self._named, "of_round": self.of_round, "ackers": ackers, "base": base},
                {
                    "sum": self._sum,
                    "attestations": b"".join(self.attestations[p] for p in self._named),
                    "acks": blob,
                },
            )
        if phase in self.combine_phases or phase in self.verify_phases:
            if party not in self.role.get(phase, ()):
                return encode_record(
                    b"TCBq",
                    {"contributors": [], "holders": [], "of_round": self.of_round, "ackers": [], "base": ""},
                    {"sum": b"", "shares": b"", "claim": b"", "acks": b""},
                )
            holders = sorted(self.sealed_shares)
            claim = self.claims[self.pending][3] if phase in self.verify_phases else b""
            ackers, base, blob = self._ack_fields()
            return encode_record(
                b"TCBq",
                {
                    "contributors": self._named,
                    "holders": holders,
                    "of_round": self.of_round,
                    "ackers": ackers,
                    "base": base,
                },
                {
                    "acks": blob,
                    "sum": self._sum,
                    "shares": b"".join(self.sealed_shares[h] for h in holders),
                    "claim": claim,
                },
            )
        return b""

    def receive(self, phase: str, party: str, payload: bytes) -> None:
        if phase == ENCRYPT:
            if payload[:4] == _ABSTAIN:
                header, _ = decode_record(payload, _ABSTAIN, {"reason": str}, ())
                self.abstained[party] = header["reason"][:300]
                return
            if party not in self.public.holders:
                raise ProtocolError(f"{party} holds no share of this federation's key")
            if party in self.excluded:
                raise ProtocolError(
                    f"{party} sent an invalid attestation before: its contributions are refused"
                )
            if self.ctx.round < self.sit_outs.until.get(party, 0) and not self.completing:
                # (While a sum is completed nothing is summed and nobody attests: a benched party
                # is welcome as a key-share holder.)
                raise ProtocolError(
                    f"{party} sits out until round {self.sit_outs.until[party]}: it sent no contribution or "
                    "did not attest its last one"
                )
            if self.combined is None:
                self.combined = self.scheme.combiner(self.public.paillier, self.ctx)
            self.combined.add(payload)  # checked whole (count, sizes, Z*_{n²}) before it is folded in
            self.contributors_.add(party)
            self.payloads[party] = payload
        elif phase == ATTEST:
            _, parts = decode_record(payload, b"TATr", {}, ("attestation",))
            if party not in self.contributors_ or self.completing:
                if parts["attestation"]:
                    raise ProtocolError("sent an attestation it was not asked for")
                return
            try:
                value = check_attestation(
                    self.public, party, parts["attestation"], self._attest_context(party), self.count
                )
            except (ProtocolError, WireError) as exc:
                self.culprits_[party] = f"sent an invalid attestation of its contribution ({exc})"
                self.excluded.add(party)
                raise
            self.attested[party] = value
            self.attestations[party] = parts["attestation"]
        elif phase == ACK:
            header, parts = decode_record(payload, b"TAKr", {"base": str}, ("ack",))
            if party not in self._ack_asked():
                if parts["ack"] or header["base"]:
                    raise ProtocolError("sent an acknowledgement it was not asked for")
                return
            base = header["base"]
            if not re.fullmatch(r"[0-9a-f]{64}", base):
                raise ProtocolError("an acknowledgement's base is not a SHA-256 digest in lowercase hex")
            message = _ack_message(
                self.ctx.session, self.of_round, party, tuple(self._named), self._digest, base
            )
            signing.verify(self.public.signing[self.public.index(party) - 1], parts["ack"], message, party)
            self.acks[party] = (base, parts["ack"])
        elif phase == SHARE:
            _, parts = decode_record(payload, b"TSHr", {}, ("sealed",))
            if party not in self.asked:
                if parts["sealed"]:
                    raise ProtocolError("sent decryption shares it was not asked for")
                return
            if len(parts["sealed"]) != _share_size(self.public, self.count):
                raise WireError("sealed decryption shares of the wrong size")
            self.sealed_shares[party] = parts["sealed"]
        elif phase in self.combine_phases or phase in self.verify_phases:
            header, parts = decode_record(
                payload, b"TCBr", {"status": str, "bad": list}, ("model", "claim", "signature")
            )
            if party not in self.role.get(phase, ()):
                if header["status"] != "none" or header["bad"] or any(parts.values()):
                    raise ProtocolError("answered a combination it was not asked for")
                return
            status, bad = header["status"], header["bad"]
            if status not in ("sealed", "short", "disputed"):
                raise ProtocolError(f"a combiner answered {status!r}")
            if any(not isinstance(b, str) or b not in self.sealed_shares for b in bad) or len(
                set(bad)
            ) != len(bad):
                raise ProtocolError("a combiner named holders that sent no shares")
            if status == "sealed":
                self._check_record(parts["model"])
                signing.verify(
                    self.public.signing[self.public.index(party) - 1],
                    parts["signature"],
                    _record_message(parts["model"]),
                    party,
                )
                self.signatures.setdefault(hashlib.sha256(parts["model"]).digest(), {})[party] = parts[
                    "signature"
                ]
                if phase in self.combine_phases:
                    if len(parts["claim"]) != _claim_size(self.public, self.count):
                        raise WireError("the decryptor's sealed claim has the wrong size")
                elif parts["claim"]:
                    raise WireError("only a decryptor sends a claim")
            elif parts["model"] or parts["claim"] or parts["signature"]:
                raise WireError("an answer without a record carries nothing")
            self.replies[(phase, party)] = (status, sorted(bad), parts["model"], parts["claim"])
        else:
            raise ProtocolError(f"paillier-threshold has no phase {phase!r}")

    def _ack_fields(self) -> tuple[list[str], str, bytes]:
        """The acknowledgers (sorted), their common base and their signatures in that order."""
        ackers = sorted(self.acks)
        base = self.acks[ackers[0]][0] if ackers else ""
        return ackers, base, b"".join(self.acks[p][1] for p in ackers)

    def _ack_asked(self) -> set[str]:
        """Who is asked to acknowledge: this round's contributors, or, completing an earlier sum, its
        contributors that have not acknowledged it yet."""
        return set(self.contributors_) - set(self.acks) if self.completing else set(self.contributors_)

    def _check_record(self, record: bytes) -> None:
        model, parts = decode_record(record, b"SKMD", _record_header(), ("sealed",))
        if model["round"] != self.ctx.round or model["session"] != self.ctx.session:
            raise ProtocolError("the sealed model is labelled with another round or session")
        if model["contributors"] != self._named or model["sum"] != self._digest:
            raise ProtocolError("the sealed model names other contributors or another sum than it was sent")
        if len(parts["sealed"]) != sealed_record_size(self.ctx.vector_size):
            raise WireError("the sealed model does not have the size of a sealed record of this round")

    def _rotation(self, candidates: list[str]) -> list[str]:
        """Sorted, rotated by the round number (roles move on), parties to avoid last."""
        preferred = sorted(p for p in candidates if p not in self.avoid)
        if preferred:
            start = self.ctx.round % len(preferred)
            preferred = preferred[start:] + preferred[:start]
        return preferred + sorted(p for p in candidates if p in self.avoid)

    def close_phase(self, phase: str, survivors: frozenset[str]) -> None:
        t = self.public.threshold
        if phase == ENCRYPT:
            self._bench_absent(survivors)
        if phase == ENCRYPT and self.completing:
            # This round's contributions are not summed: the exposed sum is decrypted instead, by any
            # t live holders (they check its attestations and acknowledgements, made in its round).
            self._named, self._sum = self.exposed["named"], self.exposed["sum"]
            self._digest, self.attestations = self.exposed["digest"], self.exposed["attestations"]
            self.acks = dict(self.exposed["acks"])
            self.contributors_ = set(self._named)
            self.pool = sorted(p for p in survivors if p in self.public.holders)
        elif phase == ENCRYPT:
            summed = self.contributors_ & survivors - self.waiting
            if not summed:
                raise RoundFailed("paillier-threshold: no ciphertexts arrived")
            self._form_sum(summed)
            self.pool = list(self._named)
            self._holders()
            needed = quorum(len(self.ctx.parties), t)
            if len(self._named) < needed:
                raise RoundFailed(
                    f"paillier-threshold: {len(self._named)} of {len(self.ctx.parties)} invited parties "
                    f"contributed, below the quorum of {needed} (more than half of the invited plus t − 1); "
                    "nothing was decrypted and the model is unchanged"
                )
        elif phase == ATTEST:
            if not self.completing:
                self._close_attestations(survivors)
        elif phase == ACK:
            # One base per sum: the model most acknowledgers trained from (an honest aggregator
            # serves one model; a party sent another does not count towards this sum's quorum).
            bases = sorted({base for base, _ in self.acks.values()})
            if bases:
                chosen = max(bases, key=lambda b: sum(v[0] == b for v in self.acks.values()))
                self.acks = {p: v for p, v in self.acks.items() if v[0] == chosen}
            needed = quorum(len(self._named), t)
            if len(self.acks) < needed:
                raise RoundFailed(
                    f"paillier-threshold: {len(self.acks)} of the sum's {len(self._named)} contributors "
                    f"acknowledged it, {needed} are needed; nothing was decrypted and the model is "
                    "unchanged (the next rounds ask the others to acknowledge it)"
                )
            # A contributor of the sum shares for it only if it acknowledged it.
            self.pool = [p for p in self.pool if p not in self.contributors_ or p in self.acks]
            live = [p for p in self.pool if p in survivors]
            holders = [p for p in live if p in self.public.holders and p not in self.distrusted]
            if len(holders) < t:
                raise RoundFailed(
                    f"paillier-threshold: only {len(holders)} trusted key-share holders are live, {t} are "
                    "needed to decrypt; nothing was decrypted and the model is unchanged"
                )
            ordered = self._rotation(holders)
            self.asked = sorted(ordered[: self.share_holders] if self.share_holders else ordered)
        elif phase == SHARE:
            self.sealed_shares = {p: s for p, s in self.sealed_shares.items() if p in survivors}
            if len(self.sealed_shares) < t:
                raise RoundFailed(
                    f"paillier-threshold: {len(self.sealed_shares)} holders sent decryption shares, {t} are "
                    "needed; nothing was revealed and the model is unchanged"
                )
            self.shares_out = True  # t shares are out: any party holding the model key can decrypt
            self.decryptor = self._next_decryptor()
            self.role[self.combine_phases[0]] = [self.decryptor] if self.decryptor else []
        elif phase in self.combine_phases:
            self._close_combine(phase)
        elif phase in self.verify_phases:
            self._close_verify(phase)

    # --- decryption attempts ---------------------------------------------------------------------
    #
    # A round whose sum a combiner has decrypted must not simply fail: its sum was seen, and a later
    # round over another contributor set with the same (unchanged) updates would reveal their
    # difference (attack B1). So decryption is tried up to ATTEMPTS times with fresh combiners: a
    # decryptor that drops, answers "short" or is disputed is followed by another; a verifier that
    # drops by another verifier of the same claim. Each share sender combines at most once a round.
    # Once a record is confirmed (a decryptor's claim checked by a different verifier), every earlier
    # disagreement is judged against it and the liar named.

    def _needed(self) -> int:
        """Verifiers that must confirm a claim: t − 1, so that with its decryptor t parties agree and
        at least one of them is honest (at most t − 1 collude); one while another contributor exists."""
        return 0 if len(self.pool) == 1 else max(1, self.public.threshold - 1)

    def _candidates(self, exclude: set[str]) -> list[str]:
        """Contributors that may take a role (every contributor holds the model key, hence can open
        the shares): never one barred or failed this round; in the rotation's order, those without a
        role yet first and those in a dispute last."""
        allowed = [p for p in self._rotation(self.pool) if p not in self.barred | self.failed | exclude]
        disputed = {p for pair in self.disputes for p in pair}
        return sorted(allowed, key=lambda p: (p in disputed, p in self.used))  # stable: keeps the rotation

    def _next_decryptor(self) -> str | None:
        decrypted = set(self.claims) | {d for d, _ in self.shorts}
        found = self._candidates(decrypted)
        if not found:
            return None
        self.used.add(found[0])
        return found[0]

    def _assign_verifiers(self) -> list[str]:
        """Fresh verifiers for the pending claim, as many as it still needs."""
        asked = self.verified.setdefault(self.pending, set())
        need = self._needed() - len(self.agreed.setdefault(self.pending, set()))
        found = self._candidates({self.pending} | asked)[: max(need, 0)]
        self.used.update(found)
        asked.update(found)
        return found

    def _close_combine(self, phase: str) -> None:
        decryptors = self.role.get(phase, [])
        verify = self.verify_phases[self.combine_phases.index(phase)]
        t = self.public.threshold
        if decryptors:
            decryptor = decryptors[0]
            reply = self.replies.get((phase, decryptor))
            if reply is None or reply[0] == "disputed":
                self.failed.add(decryptor)
                self.avoid.add(decryptor)
                self.failures.append(f"the decryptor {decryptor} dropped or answered nothing valid")
            elif reply[0] == "short":
                valid = len(self.sealed_shares) - len(reply[1])
                if valid >= t:  # it must name every holder whose shares failed: at least t were valid
                    self.culprits_[decryptor] = (
                        f"answered 'short' naming {len(reply[1])} of {len(self.sealed_shares)} share "
                        f"senders bad, which leaves {valid} ≥ t = {t} valid shares"
                    )
                    self.barred.add(decryptor)
                self.shorts.append((decryptor, reply[1]))
                self.failures.append(f"the decryptor {decryptor} found fewer than {t} valid shares")
                self._distrust_agreed_bad()
            else:
                self.pending = decryptor
                self.claims[decryptor] = reply
                self.decrypted_by.append(decryptor)
        self.role[verify] = []
        if self.pending is not None and self.sealed is None:
            if self._needed() == 0:
                self._accept(self.claims[self.pending], [self.pending])  # one contributor: no verifier
            else:
                self.role[verify] = self._assign_verifiers()

    def _close_verify(self, phase: str) -> None:
        if self.sealed is None and self.pending is not None:
            first = self.claims[self.pending]
            for verifier in self.role.get(phase, []):
                second = self.replies.get((phase, verifier))
                if second is None:
                    self.failed.add(verifier)
                    self.avoid.add(verifier)
                    self.failures.append(f"the verifier {verifier} dropped or answered nothing valid")
                elif (
                    second[0] == "sealed"
                    and first[1] == second[1]
                    and hmac.compare_digest(first[2], second[2])
                ):
                    self.agreed[self.pending].add(verifier)
                else:
                    self.disputes.append((self.pending, verifier))
                    self.avoid |= {self.pending, verifier}
                    self.failures.append(
                        f"the verifier {verifier} contradicts the decryptor {self.pending} ({second[0]})"
                    )
            # A claim is decided by its verifiers' deterministic checks: confirmed by t − 1 (with its
            # decryptor, t parties: one honest), refuted by t (one honest); undecided, it goes to
            # more verifiers. t − 1 colluders can neither confirm nor refute a claim alone.
            disputed = [v for d, v in self.disputes if d == self.pending]
            if len(self.agreed[self.pending]) >= self._needed():
                self._accept(first, [self.pending, *sorted(self.agreed[self.pending])])
            elif len(disputed) >= self.public.threshold:
                for liar in [self.pending, *sorted(self.agreed[self.pending])]:
                    self.culprits_[liar] = (
                        f"claimed or confirmed a decryption that {len(disputed)} verifiers refuted"
                    )
                    self.barred.add(liar)
                self.failed.add(self.pending)
                self.pending = None
        if self.sealed is not None:
            return
        index = self.verify_phases.index(phase)
        if index + 1 < len(self.combine_phases):
            combine = self.combine_phases[index + 1]
            decryptor = None if self.pending is not None else self._next_decryptor()
            self.role[combine] = [decryptor] if decryptor else []
            return
        seen = sorted(set(self.decrypted_by))
        outcome = (
            f"the sum was decrypted by {', '.join(seen)} but never confirmed (its shares and the "
            "decryptors' claims stay sealed from the aggregator)"
            if seen
            else "nothing was revealed"
        )
        raise RoundFailed(
            f"paillier-threshold: no decryption was confirmed in {len(self.combine_phases)} attempts "
            f"({'; '.join(self.failures) or 'no combiner was left'}); {outcome}; the model is unchanged"
        )

    def _distrust_agreed_bad(self) -> None:
        """t combiners that name the same holders' shares bad: those holders are distrusted."""
        lists = {}
        for combiner, bad in self.shorts:
            lists.setdefault(tuple(bad), set()).add(combiner)
        for bad, combiners in lists.items():
            # t combiners: at least one honest (t − 1 colluders agreeing must not distrust anyone).
            if bad and len(combiners) >= self.public.threshold:
                for holder in bad:
                    self.culprits_[holder] = (
                        "sent decryption shares whose proof failed "
                        f"(found by {' and '.join(sorted(combiners))})"
                    )
                    self.distrusted.add(holder)

    def _holders(self) -> list[str]:
        """The trusted key-share holders among the contributors; fails the round below t."""
        t = self.public.threshold
        holders = [p for p in self.contributors_ if p in self.public.holders and p not in self.distrusted]
        if len(holders) < t:
            raise RoundFailed(
                f"paillier-threshold: only {len(holders)} trusted key-share holders contributed, {t} are "
                "needed to decrypt; nothing was decrypted and the model is unchanged"
            )
        return holders

    def _close_attestations(self, survivors: frozenset[str]) -> None:
        """Every contributor must attest its contribution to this sum, and the attested D's must
        multiply to the sum's γ-combination; otherwise the round fails before anything is decrypted.
        The sum is never re-formed and attested again: a party attests once a round, so two sums of
        one round cannot both gather the attestations of an honest party (attacker 3-1: a victim left
        on the first sum shared for it while the others moved on, and the two sums differed by it)."""
        missing = {p for p in self._named if p not in self.attested or p not in survivors}
        if not missing:
            gammas = attestation.coefficients(self.ctx.session, self.ctx.round, self._digest, self.count)
            ciphertexts = _split_ciphertexts(self._sum, self.public, self.count)
            values = [self.attested[p] for p in self._named]
            if attestation.matches_sum(self.public.paillier, ciphertexts, gammas, values):
                for party in self._named:
                    self.sit_outs.forgive(party)
                return
            # Someone attested a D other than its own ciphertexts' combination. Only an attack gets
            # here, so finding who (one K-base multi-exponentiation per contributor) is affordable.
            nsq = self.public.paillier.nsquare
            for party in self._named:
                if tp.multi_power(self._ciphertexts(party), gammas, nsq) != self.attested[party]:
                    missing.add(party)
                    self.culprits_[party] = "attested a contribution other than the ciphertexts it sent"
                    self.excluded.add(party)
        # A contributor that did not attest sits out the next rounds, twice as long each time in a
        # row (a party dropping here on purpose would otherwise fail every round); liars for good.
        for party in missing - self.excluded:
            self._bench(party)
        raise RoundFailed(
            f"paillier-threshold: {', '.join(sorted(missing))} did not attest the sum; nothing was decrypted "
            "and the model is unchanged (they sit out the next rounds)"
        )

    def _bench(self, party: str) -> None:
        """``party`` sits out the next rounds (not invited: ``resting``), twice as long each time
        in a row, up to SIT_OUT_LIMIT rounds; a round it attests in resets the count."""
        self.sit_outs.bench(party, self.ctx.round)

    def _bench_absent(self, survivors: frozenset[str]) -> None:
        """Invited parties that sent no valid contribution (and did not abstain) sit out like one
        that missed its attestation. The quorum counts the invited: with three holders and t = 2 it
        is all three, and one offline party — or one that stays away on purpose — failed every
        round for ever (found by an attacker); now it is left out of the next rounds' rosters, the
        others' quorum is over themselves, and it is invited again after its bench."""
        for party in self.ctx.parties:
            if party not in survivors and party not in self.abstained:
                self._bench(party)

    def resting(self, round: int) -> dict[str, str]:
        """Contributors caught lying in an attestation (for good) and benched ones (until their
        round): they are not invited, so that the quorum over the invited counts only parties whose
        contributions can be summed."""
        out = {p: "it sent an invalid attestation: its contributions are refused" for p in self.excluded}
        for party, until in self.sit_outs.resting(round).items():
            out.setdefault(
                party, f"it sent no contribution or did not attest one; it sits out until round {until + 1}"
            )
        return out

    def _accept(self, reply: tuple, combiners: list[str]) -> None:
        signed = self.signatures[hashlib.sha256(reply[2]).digest()]
        self.sealed = countersigned_record(reply[2], {c: signed[c] for c in combiners})
        # Judge the round's earlier disagreements against the confirmed record: proofs and the
        # batch check are deterministic, so whoever contradicts the record lied.
        for decryptor, verifier in self.disputes:
            if decryptor in self.barred:
                continue  # its claim was refuted: its disputers were right
            earlier = self.claims[decryptor]
            same = earlier[1] == reply[1] and hmac.compare_digest(earlier[2], reply[2])
            # Claims are sealed deterministically (SIV): an honest claim is byte-identical to the
            # confirmed one, so a decryptor that sealed a right record beside a wrong claim is caught.
            if same and hmac.compare_digest(earlier[3], reply[3]):
                self.culprits_[verifier] = "disputed a decryption that a later attempt confirmed"
                self.barred.add(verifier)
            else:
                self.culprits_[decryptor] = "claimed a decryption that a later attempt contradicted"
                self.barred.add(decryptor)
        for decryptor, bad in self.shorts:
            if set(bad) - set(reply[1]):
                self.culprits_[decryptor] = (
                    "named bad the shares of holders whose proofs the confirmed decryption checked"
                )
                self.barred.add(decryptor)
        for holder in reply[1]:
            self.culprits_[holder] = (
                f"sent decryption shares whose proof failed (found by {' and '.join(combiners)})"
            )
            self.distrusted.add(holder)
        self.avoid -= set(combiners)

    def finished(self) -> bool:
        return self.sealed is not None

    def culprits(self) -> dict[str, str]:
        return dict(self.culprits_)

    def contributors(self) -> frozenset[str]:
        return frozenset(self.contributors_)

    def result(self) -> SealedModel:
        if self.sealed is None:
            raise RoundFailed("paillier-threshold: no sealed model was agreed")
        return SealedModel(self.sealed)


class _ThresholdParty(_Party):
    """A party: encrypts (as ``paillier``), computes and proves its decryption shares, and as
    decryptor or verifier combines them. Refuses what a shared-key party refuses, plus a second
    share request in a round (one set of decryption shares per party per round)."""

    def __init__(
        self, scheme: ThresholdScheme, party_id: str, share: tp.KeyShare, workers: int, acks: AckLog
    ) -> None:
        super().__init__(scheme, party_id, share, None)
        self.workers = workers
        self.acks = acks  # this key share's acknowledgements, across sessions and restarts
        self._handlers = {
            ENCRYPT: self._encrypt,
            ATTEST: self._attest,
            ACK: self._acknowledge,
            SHARE: self._share,
            **{phase: self._combine for pair in attempt_phases(share.public) for phase in pair},
        }
        self.bad_shares: list[tuple[int, str]] = []  # (round, holder) whose proofs failed here
        # The last attestation: {round: (contributors, sum digest, signed bytes, base)}; holders share
        # only for it. ``base``: SHA-256 of the model the attested contribution was trained from.
        self._attested: dict[int, tuple[tuple[str, ...], str, bytes, str]] = {}
        # The last sum this party acknowledged: (round, digest, base).
        self.acknowledged: tuple[int, str, str] | None = None
        # Every model (by content) on which this party acknowledged a sum of its update: it attests no
        # other sum of an update computed on one of them (spec, "Acknowledgements"). By content, not by
        # label: a new release carrying an old model (re-served, or re-fused by a combiner kept on an
        # old model) must not free an update computed on that model again (fifth attacker, 2).
        self.acknowledged_bases: set[str] = set()
        self._base_digest = ""  # SHA-256 of the model this round's contribution was trained from
        self._combined: dict[int, tuple[tuple[str, ...], str]] = {}  # the sum combined this round
        self._combines = 0

    def start_round(self, ctx: RoundContext, provide: Any) -> None:
        super().start_round(ctx, provide)
        self._combines = 0
        self._base_digest = ""  # until this round's contribution is made

    def labelled(self, model: np.ndarray, model_key: bytes, associated: bytes) -> np.ndarray:
        """Records here carry their model unmoved, a refusal marker its base unchanged.
        Acknowledgements name each party's base in the clear and bind one decryptable sum to each
        unchanged update ("Acknowledgements"): a marker that moved the base would free the same
        update for a second sum. The aggregator can read a marker from the unchanged base, but
        cannot make one without a colluding contributor (every contributor attests the exact sum),
        who opens the record anyway."""
        return np.array(model, dtype=np.float64, copy=True)

    def check_clear_model(self, model: Provider, session: str) -> None:
        """A key share that acknowledged sums trains on a model in the clear only if it is exactly
        the one its first acknowledgement of this session was trained on (a retry of the initial
        round, a restart): the aggregator chooses a clear model, and a copy of an acknowledged base
        with other bytes (one ulp off, zeros negated, arrays reordered: a new digest), or any clear
        model in another session, would free the same update for a second sum (found by an
        attacker: a second session from such a copy of the initial model, and one colluder read an
        honest party's update)."""
        entries = self.acks.entries()
        if not entries:
            return
        base, first_session, first_round, _ = entries[0]
        same_session = all(entry[1] == session for entry in entries)
        if not (same_session and _model_digest(model()) == base):
            raise ProtocolError(ack_log.clear_refusal(first_session, first_round))

    def open_model(self, sealed: bytes) -> np.ndarray:
        """A released model is opened only with t combiners' signatures on its record, so its content
        comes from a sum an honest combiner decrypted and fused: colluders cannot seal a model of
        their choosing (e.g. the old one nudged) for honest parties to train on."""
        return super().open_model(open_countersigned(self.material.public, sealed))

    def _encrypt(self, request: bytes) -> bytes:
        reply = super()._encrypt(request)
        self._base_digest = _model_digest(self._current if self._current is not None else self._last_model)
        return reply

    def respond(self, phase: str, request: bytes) -> bytes:
        handler = self._handlers.get(phase)
        if handler is None:
            raise ProtocolError(f"paillier-threshold has no phase {phase!r}")
        if phase in self.done:
            raise ProtocolError(f"phase {phase!r} was already answered in this round; replay refused")
        self.done.add(phase)
        return handler(request)

    def _request_sum(
        self, names: list, of_round: Any, blob: bytes
    ) -> tuple[tuple[str, ...], list[int], str, RoundContext]:
        """The sum a share or combine request names: this round's (contributors checked against
        this round's invitation), or an earlier round's exposed sum being completed. Returns the
        contributors, ciphertexts, digest and the context of the round the sum belongs to."""
        if ENCRYPT not in self.done:
            raise ProtocolError("asked about a sum before contributing to it")
        if isinstance(of_round, bool) or not isinstance(of_round, int) or not 0 <= of_round <= self.ctx.round:
            raise ProtocolError("a sum request names no round up to this one")
        if of_round == self.ctx.round:
            contributors, sum_ctx = _contributor_list(names, self.ctx, self.me), self.ctx
        else:
            contributors = _exposed_contributors(names, self.ctx, self.material.public)
            sum_ctx = dataclasses.replace(self.ctx, round=of_round)
        ciphertexts = _split_ciphertexts(blob, self.material.public, self.scheme._count(self.ctx))
        digest = sum_digest(blob)
        return contributors, ciphertexts, digest, sum_ctx

    def _attest(self, request: bytes) -> bytes:
        """Prove knowledge of this party's own contribution to the sum named (by its digest)."""
        header, _ = decode_record(request, b"TATq", {"contributors": list, "sum": str}, ())
        if not header["contributors"]:
            return encode_record(b"TATr", {}, {"attestation": b""})
        if ENCRYPT not in self.done:
            raise ProtocolError("asked to attest a sum before contributing to it")
        contributors = _contributor_list(header["contributors"], self.ctx, self.me)
        needed = quorum(len(self.ctx.parties), self.material.public.threshold)
        if len(contributors) < needed:
            raise ProtocolError(
                f"a sum of {len(contributors)} of the {len(self.ctx.parties)} invited parties is below the "
                f"quorum of {needed}: two such sums of one round could split the honest contributors"
            )
        digest = header["sum"]
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ProtocolError("the attest request's sum digest is not 64 lowercase hex digits")
        opening = self.scheme.openings.get(self.me)
        if opening is None or opening[:2] != (self.ctx.session, self.ctx.round):
            raise ProtocolError("this party holds no opening of a contribution to this round")
        if self.ctx.round in self._attested:
            raise ProtocolError("this party attests one sum a round; a second attestation is refused")
        if not self._base_digest or self._base_digest in self.acknowledged_bases:
            # It acknowledged a sum of an update computed on this very model, which may have been
            # decrypted: a second sum of the same update over another set would reveal their
            # difference (C5). Only a release that changes the model frees it.
            raise ProtocolError(
                "this party acknowledged a sum of its update computed on this same model; it attests "
                "no other sum of it until a released model changes it"
            )
        earlier = self.acks.acknowledged_on(self._base_digest)  # in another session, or before a restart
        if earlier is not None:
            raise ProtocolError(ack_log.refusal(*earlier))
        _, _, plaintexts, seed = opening
        public = self.material.public.paillier
        gammas = attestation.coefficients(self.ctx.session, self.ctx.round, digest, len(plaintexts))
        ctx = attestation.context(self.ctx.session, self.ctx.round, self.me, contributors, digest)
        blob = attestation.attest(
            public, plaintexts, djn_exponents(seed, len(plaintexts), public), gammas, ctx
        )
        signed = sign_attestation(self.material, ctx, blob)
        self._attested = {self.ctx.round: (contributors, digest, signed, self._base_digest)}
        return encode_record(b"TATr", {}, {"attestation": signed})

    def _acknowledge(self, request: bytes) -> bytes:
        """Bind this party to the sum it attested last (this round's, or an earlier one being
        completed): from now on it attests no other sum of the same update, and it signs that the
        sum may be decrypted (holders need a quorum of these)."""
        header, _ = decode_record(request, b"TAKq", {"contributors": list, "sum": str, "of_round": int}, ())
        if not header["contributors"]:
            return encode_record(b"TAKr", {"base": ""}, {"ack": b""})
        of_round = header["of_round"]
        mine = self._attested.get(of_round) if type(of_round) is int else None
        if mine is None and type(of_round) is int and isinstance(header["sum"], str):
            # Restarted since: a sum this share already acknowledged durably may be acknowledged
            # again — the same statement, signed deterministically, binding nothing new (its reply
            # may have been lost; without this the sum stayed short of its quorum for ever).
            bound = self.acks.bound_sum(self.ctx.session, of_round, header["sum"])
            if bound is not None:
                mine = (bound[1], header["sum"], b"", bound[0])
        if mine is None or list(mine[0]) != header["contributors"] or mine[1] != header["sum"]:
            raise ProtocolError(
                "asked to acknowledge a sum that is not the last one this party attested its contribution to"
            )
        self.acks.record(mine[3], self.ctx.session, of_round, mine[1], tuple(mine[0]))  # durably, first
        self.acknowledged = (of_round, mine[1], mine[3])
        self.acknowledged_bases.add(mine[3])
        ack = sign_ack(self.material, self.ctx.session, of_round, mine[0], mine[1], mine[3])
        return encode_record(b"TAKr", {"base": mine[3]}, {"ack": ack})

    def _check_attestations(
        self,
        contributors: tuple[str, ...],
        ciphertexts: list[int],
        digest: str,
        blob: bytes,
        sum_ctx: RoundContext,
    ) -> None:
        """A holder shares only for a sum every named contributor attested (spec, "Attestations"):
        each proof of plaintext knowledge holds and the attested D's multiply to the γ-combination.
        A sum of this round: only one this party attested itself, with its own attestation in its
        slot. An exposed sum of an earlier round: its attestations of that round."""
        public = self.material.public
        size = attestation_size(public, len(ciphertexts))
        if len(blob) != size * len(contributors):
            raise WireError("the share request does not carry one attestation per contributor")
        pieces = {party: blob[k * size : (k + 1) * size] for k, party in enumerate(contributors)}
        if sum_ctx.round == self.ctx.round:
            mine = self._attested.get(self.ctx.round)
            if mine is None or mine[0] != contributors or mine[1] != digest:
                raise ProtocolError("asked to share for a sum this party did not attest its contribution to")
            if not hmac.compare_digest(pieces[self.me], mine[2]):
                raise ProtocolError(
                    "the share request carries an attestation in this party's name it did not make"
                )
        values = [
            check_attestation(
                public,
                party,
                pieces[party],
                attestation.context(sum_ctx.session, sum_ctx.round, party, contributors, digest),
                len(ciphertexts),
            )
            for party in contributors
        ]
        gammas = attestation.coefficients(sum_ctx.session, sum_ctx.round, digest, len(ciphertexts))
        if not attestation.matches_sum(public.paillier, ciphertexts, gammas, values):
            raise ProtocolError("the sum is not the product of the attested contributions: no shares")

    def _check_request_acks(
        self, header: dict, acks: bytes, contributors: tuple[str, ...], digest: str, sum_ctx: RoundContext
    ) -> None:
        """The acknowledgements a share or combine request carries, checked (``check_acks``)."""
        check_acks(
            self.material.public,
            sum_ctx.session,
            sum_ctx.round,
            contributors,
            digest,
            header["ackers"],
            header["base"],
            acks,
        )

    def _share(self, request: bytes) -> bytes:
        header, parts = decode_record(
            request,
            b"TSHq",
            {"contributors": list, "of_round": int, "ackers": list, "base": str},
            ("sum", "attestations", "acks"),
        )
        if not parts["sum"]:
            return encode_record(b"TSHr", {}, {"sealed": b""})
        contributors, ciphertexts, digest, sum_ctx = self._request_sum(
            header["contributors"], header["of_round"], parts["sum"]
        )
        self._check_attestations(contributors, ciphertexts, digest, parts["attestations"], sum_ctx)
        # The last sum this party acknowledged: in memory, or — after a restart — in its share's log
        # (found by an attacker: a sum exposed before a crash was refused for ever by the restarted
        # contributors, which no longer remembered acknowledging it, and no new sum could follow).
        acknowledged = self.acknowledged[:2] if self.acknowledged else self.acks.last_of(self.ctx.session)
        if self.me in contributors and acknowledged != (sum_ctx.round, digest):
            raise ProtocolError("asked to share for a sum this party contributed to but did not acknowledge")
        self._check_request_acks(header, parts["acks"], contributors, digest, sum_ctx)
        key: tp.KeyShare = self.material
        ys = compute_shares(key, ciphertexts, self.workers)
        proof = tp.prove(key, ciphertexts, ys, tp.context(self.ctx.session, self.ctx.round, self.me, digest))
        blob = tp.encode_shares(key.public, ys, proof)
        aad = _share_aad(self.ctx, self.me, list(contributors), digest, b"share")
        sealed = channel.seal(_share_key(key.model_key), blob, aad, self.rng)
        return encode_record(b"TSHr", {}, {"sealed": sealed})

    def _open_shares(
        self, holders: list, blob: bytes, ciphertexts: list[int], contributors: tuple[str, ...], digest: str
    ) -> tuple[dict[int, list[int]], list[str]]:
        key: tp.KeyShare = self.material
        public = key.public
        size = _share_size(public, len(ciphertexts))
        if (
            any(not isinstance(h, str) for h in holders)
            or len(set(holders)) != len(holders)
            or len(blob) != size * len(holders)
        ):
            raise ProtocolError("the combine request's holders and shares do not match")
        valid: dict[int, list[int]] = {}
        bad: list[str] = []
        for k, holder in enumerate(holders):
            index = public.index(holder)  # a name that holds no share: the request is invalid
            sealed = blob[k * size : (k + 1) * size]
            try:
                plain = channel.open_sealed(
                    _share_key(key.model_key),
                    sealed,
                    _share_aad(self.ctx, holder, list(contributors), digest, b"share"),
                )
                ys, proof = tp.parse_shares(plain, public, len(ciphertexts))
                ok = tp.verify(
                    public,
                    index,
                    ciphertexts,
                    ys,
                    proof,
                    tp.context(self.ctx.session, self.ctx.round, holder, digest),
                )
            except (ProtocolError, WireError):
                ok = False
            if ok:
                valid[index] = ys
            else:
                bad.append(holder)
                self.bad_shares.append((self.ctx.round, holder))
                log.warning("%s: the decryption shares of %s failed their proof", self.me, holder)
        return valid, sorted(bad)

    def _combine(self, request: bytes) -> bytes:
        header, parts = decode_record(
            request,
            b"TCBq",
            {"contributors": list, "holders": list, "of_round": int, "ackers": list, "base": str},
            ("sum", "shares", "claim", "acks"),
        )
        if not parts["sum"]:
            return encode_record(
                b"TCBr", {"status": "none", "bad": []}, {"model": b"", "claim": b"", "signature": b""}
            )
        if self.fuse is None:
            raise ProtocolError("asked to combine without a fuser")
        contributors, ciphertexts, digest, sum_ctx = self._request_sum(
            header["contributors"], header["of_round"], parts["sum"]
        )
        key: tp.KeyShare = self.material
        self._check_request_acks(header, parts["acks"], contributors, digest, sum_ctx)
        # The model the fuse steps from (this round's, as the party opened it), digested now.
        fuses_onto = _model_digest(self._base() if self._base is not None else None)
        if not fuses_onto or not hmac.compare_digest(header["base"], fuses_onto):
            # The record is this party's model plus the sum's mean: fused onto another model than the
            # one its contributors trained from, it could be the old model again under a new label
            # (fourth attacker, D1: a party served a chosen first model combined an exposed sum).
            raise ProtocolError(
                "this party's model is not the one the sum's contributors trained from; it fuses the "
                "sum onto no other model"
            )
        # Several roles in a round (a decryption, then verifying another's claim) are allowed, all for
        # one sum: its records are deterministic, so the party never seals two contents under a label.
        if self._combined.get(self.ctx.round, (contributors, digest)) != (contributors, digest):
            raise ProtocolError("already combined another sum in this round; refused")
        if self._combines >= MAX_ATTEMPTS:
            raise ProtocolError("asked to combine more often than a round has attempts")
        self._combines += 1
        first_time = self.ctx.round not in self._combined
        self._combined = {self.ctx.round: (contributors, digest)}
        if (first_time and self.ctx.round in self._label_digest) or self.ctx.round < self.latest_model_round:
            raise ProtocolError(f"already holds a sealed record labelled round {self.ctx.round + 1} or later")
        public = key.public
        valid, bad = self._open_shares(header["holders"], parts["shares"], ciphertexts, contributors, digest)
        if len(valid) < public.threshold:
            return encode_record(
                b"TCBr", {"status": "short", "bad": bad}, {"model": b"", "claim": b"", "signature": b""}
            )
        claim_aad = _share_aad(self.ctx, "", list(contributors), digest, b"claim")
        claim_key = _share_key(key.model_key)
        width = public.n_bytes
        claim_out = b""
        if parts["claim"]:
            # The verifier: check the decryptor's plaintexts with one batch equation (spec, "Verifier").
            try:
                plain = channel.open_sealed(claim_key, parts["claim"], claim_aad)
            except ProtocolError:
                plain = b""
            count = len(ciphertexts)
            if len(plain) != 2 * count * width:
                return encode_record(
                    b"TCBr",
                    {"status": "disputed", "bad": bad},
                    {"model": b"", "claim": b"", "signature": b""},
                )
            values = [int.from_bytes(plain[i : i + width], "big") for i in range(0, len(plain), width)]
            plaintexts, roots = values[:count], values[count:]
            if not tp.check_decryption(public.n, public.delta, ciphertexts, roots, plaintexts):
                log.warning("%s: the decryptor's plaintexts fail the batch check", self.me)
                return encode_record(
                    b"TCBr",
                    {"status": "disputed", "bad": bad},
                    {"model": b"", "claim": b"", "signature": b""},
                )
        else:
            chosen = dict(sorted(valid.items())[: public.threshold])
            roots = tp.combine_roots(public, chosen)
            plaintexts = lift_all(public, ciphertexts, roots, self.workers)
            blob = b"".join(tp.int_bytes(v, width) for v in (*plaintexts, *roots))
            # Sealed deterministically (SIV): two honest decryptors' claims are byte-identical, so the
            # aggregator can tell a decryptor that lied in its claim from a verifier that lied about it.
            claim_out = _seal_model(claim_key, blob, claim_aad)
        names = list(contributors)
        aad = _model_aad(self.scheme.name, self.ctx.session, self.ctx.round, names, digest)
        record_plain = self.record_plaintext(
            # The pads are those of the sum's own round (an exposed sum completed later keeps them).
            lambda: self.fuse(
                self.scheme.unpad_and_unpack(key, plaintexts, contributors, sum_ctx),
                contributors=len(contributors),
            ),
            key.model_key,
            aad,
        )
        sealed = _seal_model(key.model_key, record_plain, aad)
        record = encode_record(
            b"SKMD",
            {"round": self.ctx.round, "session": self.ctx.session, "contributors": names, "sum": digest},
            {"sealed": sealed},
        )
        record_digest = hashlib.sha256(record).digest()
        if self._label_digest.setdefault(self.ctx.round, record_digest) != record_digest:
            raise ProtocolError(f"would seal a second, different record labelled round {self.ctx.round + 1}")
        # Countersigned: parties move their base only on a record t combiners signed (spec,
        # "Acknowledgements"); with at most t − 1 colluders one of them decrypted the sum itself.
        signature = sign_record(key, record)
        return encode_record(
            b"TCBr",
            {"status": "sealed", "bad": bad},
            {"model": record, "claim": claim_out, "signature": signature},
        )


__all__ = ["PaillierThreshold", "ThresholdScheme", "demo_stack", "key_ceremony", "load_public", "load_share"]
