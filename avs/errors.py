"""The one exception tree of the project.

Every error raised on purpose is an ``AvsError``. Subclasses also derive from the stdlib type a
caller would naturally catch (``ValueError`` for bad input, ``PermissionError`` for a wrong
password), so code that does not know our tree still behaves.
"""


class AvsError(Exception):
    """Base class of every error this project raises on purpose."""


class InvalidInputError(AvsError, ValueError):
    """Input that fails validation: wrong length, out of range, malformed."""


class UntrustedAnswerError(InvalidInputError):
    """A party we rely on (the aggregator) answered something it cannot have honestly: a certificate
    of another request than the one sent, tokens that are not the certified ones."""


class InvalidPointError(InvalidInputError):
    """A curve point that is malformed, off the curve, in the wrong subgroup, or the identity."""


class InvalidKeyError(InvalidInputError):
    """A secret or public key that is out of range or malformed."""


class EncodingError(InvalidInputError):
    """A value that cannot be encoded or decoded (hex, ABI, JSON)."""


class KeystoreError(AvsError):
    """A keystore file that is missing, unreadable or of the wrong kind."""


class WrongPasswordError(KeystoreError, PermissionError):
    """The keystore's MAC does not match: the password is wrong (or the file was altered)."""


class BackendUnavailableError(AvsError, RuntimeError):
    """A requested crypto backend cannot be loaded on this machine."""


class NotFoundError(AvsError, LookupError):
    """What the call names does not exist here (a request hash, a batch index)."""


class PreconditionFailedError(AvsError):
    """A well-formed call that the current state does not allow (e.g. an insured request with no
    coverage on-chain); retrying the same call will not help until that state changes."""


class UnavailableError(AvsError):
    """This service cannot take the call now (a standby, an unreachable dependency); retry later
    or elsewhere."""


class ModelNotFoundError(NotFoundError):
    """A model that is not known or not on local disk (unknown model id, missing folder or files)."""


class ModelMismatchError(AvsError):
    """Local weights, tokenizer or chat template whose hash differs from the registered model profile."""


class ContextLimitError(InvalidInputError):
    """A prompt plus its token budget that does not fit the model's context or the profile's limits."""


class InferenceError(AvsError, RuntimeError):
    """A failure while running a model (the inputs were valid; the runtime or hardware was not)."""


class SlashingProtectionError(AvsError):
    """Signing this would contradict something already signed (a slashable equivocation)."""


class AuthenticationError(AvsError):
    """A call without a valid signature from an authorised key (unsigned, forged, expired, replayed)."""


class PermissionDeniedError(AvsError, PermissionError):
    """A well-signed call from a key that is not allowed to make it."""


class OverloadedError(AvsError):
    """Too many requests in flight; the caller should retry later or elsewhere."""


class DeadlineExceededError(AvsError, TimeoutError):
    """The caller's deadline passed before the work could finish."""


class CancelledError(AvsError):
    """The caller cancelled the call (or went away) before the work could finish."""
