"""audit/signing_vault.py against a real OpenBao server (Transit, policies, AppRole)."""
from __future__ import annotations

import base64
import hashlib
import types

import hvac.exceptions
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from audit.signing_vault import (
    SigningError,
    VaultTransitNoteSigner,
    note_key_id,
    note_verifier_key,
    vault_client_from_approle,
)
from tests.vault import make_ed25519_key

MESSAGE = b"gatehouse.example/audit\n42\nqn9S8d5Qyq4RHKq0Qk2pV7jz3fL0X1o5rP3WbE2mZk0=\n"


# -- independent helpers (deliberately not using audit.signing_vault) -----------


def parse_verifier_key(vkey: str) -> tuple[str, int, Ed25519PublicKey]:
    # Only the first two "+" separate fields: the base64 key may itself contain "+".
    name, hex_id, encoded = vkey.split("+", 2)
    raw = base64.b64decode(encoded, validate=True)
    assert len(raw) == 33 and raw[0] == 0x01, "alg byte 0x01 followed by a 32-byte key"
    assert len(hex_id) == 8 and hex_id == hex_id.lower()
    return name, int(hex_id, 16), Ed25519PublicKey.from_public_bytes(raw[1:])


def verifies(vkey: str, signature: bytes, message: bytes) -> bool:
    _, _, public_key = parse_verifier_key(vkey)
    try:
        public_key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def expected_verifier_key(name: str, public_key: bytes) -> str:
    key_hash = hashlib.sha256(name.encode() + b"\n" + b"\x01" + public_key).digest()[:4]
    encoded = base64.b64encode(b"\x01" + public_key).decode()
    return f"{name}+{key_hash.hex()}+{encoded}"


def transit_public_key(client, name: str, version: int) -> bytes:
    data = client.secrets.transit.read_key(name=name)["data"]
    return base64.b64decode(data["keys"][str(version)]["public_key"])


# -- note key rules --------------------------------------------------------------


def test_note_key_rules_match_the_go_sumdb_note_vector():
    # Known answer from golang.org/x/mod/sumdb/note's documentation.
    vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
    public_key = base64.b64decode("ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")[1:]
    assert note_key_id("PeterNeumann", public_key) == 0xC74F20A3
    assert note_verifier_key("PeterNeumann", public_key) == vkey


@pytest.mark.parametrize("bad", ["", "has space", "a+b", "tab\there"])
def test_invalid_note_names_are_refused(root_client, key_name, bad):
    make_ed25519_key(root_client, key_name)
    with pytest.raises(ValueError, match="invalid note key name"):
        VaultTransitNoteSigner(root_client, key_name, note_name=bad)


# -- signing ---------------------------------------------------------------------


def test_signature_verifies_with_key_from_verifier_key_string(root_client, key_name):
    make_ed25519_key(root_client, key_name)
    signer = VaultTransitNoteSigner(root_client, key_name)

    signature = signer.sign(MESSAGE)

    assert isinstance(signature, bytes) and len(signature) == 64
    assert verifies(signer.verifier_key(), signature, MESSAGE)
    assert not verifies(signer.verifier_key(), signature, MESSAGE + b"x")
    # Ed25519 is deterministic: Transit returns the same signature again.
    assert signer.sign(MESSAGE) == signature


def test_key_id_and_verifier_key_follow_the_c2sp_rule(root_client, key_name):
    make_ed25519_key(root_client, key_name)
    signer = VaultTransitNoteSigner(root_client, key_name)
    public_key = transit_public_key(root_client, key_name, 1)

    assert signer.name == f"gatehouse-audit-{key_name}-v1"
    assert signer.key_version == 1
    expected = expected_verifier_key(signer.name, public_key)
    assert signer.verifier_key() == expected
    assert signer.key_id == int(expected.split("+", 2)[1], 16)
    name, key_id, _ = parse_verifier_key(signer.verifier_key())
    assert (name, key_id) == (signer.name, signer.key_id)


def test_explicit_note_name(root_client, key_name):
    make_ed25519_key(root_client, key_name)
    signer = VaultTransitNoteSigner(root_client, key_name, note_name="audit.gatehouse.example")
    public_key = transit_public_key(root_client, key_name, 1)
    assert signer.name == "audit.gatehouse.example"
    assert signer.verifier_key() == expected_verifier_key("audit.gatehouse.example", public_key)
    assert verifies(signer.verifier_key(), signer.sign(MESSAGE), MESSAGE)


def test_rotation_gives_a_new_note_key_and_old_signatures_keep_verifying(root_client, key_name):
    make_ed25519_key(root_client, key_name)
    v1 = VaultTransitNoteSigner(root_client, key_name)
    old_signature = v1.sign(MESSAGE)

    root_client.secrets.transit.rotate_key(name=key_name)
    v2 = VaultTransitNoteSigner(root_client, key_name)

    assert (v1.key_version, v2.key_version) == (1, 2)
    assert v2.name == f"gatehouse-audit-{key_name}-v2"
    assert v2.key_id != v1.key_id
    assert v2.verifier_key() == expected_verifier_key(v2.name, transit_public_key(root_client, key_name, 2))
    new_signature = v2.sign(MESSAGE)
    assert new_signature != old_signature

    # Old signatures verify with the old verifier key only; new ones with the new only.
    assert verifies(v1.verifier_key(), old_signature, MESSAGE)
    assert not verifies(v2.verifier_key(), old_signature, MESSAGE)
    assert verifies(v2.verifier_key(), new_signature, MESSAGE)
    assert not verifies(v1.verifier_key(), new_signature, MESSAGE)

    # A signer stays pinned to its version after rotation; an explicit version works too.
    assert v1.sign(MESSAGE) == old_signature
    pinned = VaultTransitNoteSigner(root_client, key_name, key_version=1)
    assert pinned.verifier_key() == v1.verifier_key()
    assert pinned.sign(MESSAGE) == old_signature

    # Every version's verifier key stays computable, oldest first (also from the old signer).
    assert v1.verifier_keys_all_versions() == [v1.verifier_key(), v2.verifier_key()]
    assert v2.verifier_keys_all_versions() == [v1.verifier_key(), v2.verifier_key()]


def test_unknown_key_version_is_refused(root_client, key_name):
    make_ed25519_key(root_client, key_name)
    with pytest.raises(ValueError, match="no available version 7"):
        VaultTransitNoteSigner(root_client, key_name, key_version=7)


@pytest.mark.parametrize("key_type", ["ecdsa-p256", "rsa-2048", "aes256-gcm96"])
def test_non_ed25519_key_is_refused(root_client, key_name, key_type):
    root_client.secrets.transit.create_key(name=key_name, key_type=key_type)
    with pytest.raises(ValueError, match=rf"type '{key_type}'.*'ed25519'"):
        VaultTransitNoteSigner(root_client, key_name)


def test_derived_ed25519_key_is_refused(root_client, key_name):
    root_client.secrets.transit.create_key(name=key_name, key_type="ed25519", derived=True)
    with pytest.raises(ValueError, match="derived"):
        VaultTransitNoteSigner(root_client, key_name)


def test_missing_key_is_a_signing_error(root_client):
    with pytest.raises(SigningError, match="read key transit/does-not-exist") as excinfo:
        VaultTransitNoteSigner(root_client, "does-not-exist")
    assert isinstance(excinfo.value.__cause__, hvac.exceptions.VaultError)


# -- permissions -------------------------------------------------------------------


def _token_with_policy(openbao, root_client, policy_name: str, rules: str):
    root_client.sys.create_or_update_policy(name=policy_name, policy=rules)
    token = root_client.auth.token.create(policies=[policy_name], no_default_policy=True, ttl="10m")
    return openbao.client(token=token["auth"]["client_token"])


def test_token_allowed_only_other_key_gets_signing_error(openbao, root_client, key_name):
    make_ed25519_key(root_client, key_name)
    only_other = _token_with_policy(
        openbao, root_client, f"{key_name}-only-other",
        'path "transit/sign/other" { capabilities = ["update"] }',
    )
    with pytest.raises(SigningError, match="Forbidden") as excinfo:
        VaultTransitNoteSigner(only_other, key_name)
    assert isinstance(excinfo.value.__cause__, hvac.exceptions.Forbidden)


def test_token_that_can_read_but_not_sign_gets_signing_error(openbao, root_client, key_name):
    make_ed25519_key(root_client, key_name)
    read_only = _token_with_policy(
        openbao, root_client, f"{key_name}-read-only",
        f'path "transit/keys/{key_name}" {{ capabilities = ["read"] }}\n'
        'path "transit/sign/other" { capabilities = ["update"] }',
    )
    signer = VaultTransitNoteSigner(read_only, key_name)  # reading the public key is allowed
    with pytest.raises(SigningError, match=rf"sign with transit/{key_name} v1 failed") as excinfo:
        signer.sign(MESSAGE)
    assert isinstance(excinfo.value.__cause__, hvac.exceptions.Forbidden)


def test_unreachable_vault_is_a_signing_error(openbao, root_client, key_name):
    make_ed25519_key(root_client, key_name)
    signer = VaultTransitNoteSigner(root_client, key_name)
    signer._client = type(root_client)(url="http://127.0.0.1:9", token="x")  # nothing listens on 9
    with pytest.raises(SigningError, match="ConnectionError"):
        signer.sign(MESSAGE)


# -- local verification of what Transit returns ------------------------------------


class _LatestVersionTransit:
    """A Transit client that ignores the requested key version (as a buggy proxy might)
    and optionally relabels the answer as the requested version."""

    def __init__(self, client, relabel: bool):
        self._client = client
        self._relabel = relabel
        self.secrets = types.SimpleNamespace(transit=self)

    def read_key(self, **kwargs):
        return self._client.secrets.transit.read_key(**kwargs)

    def sign_data(self, *, key_version, **kwargs):
        response = self._client.secrets.transit.sign_data(**kwargs)
        if self._relabel:
            sig = response["data"]["signature"].split(":", 2)[2]
            response["data"]["signature"] = f"vault:v{key_version}:{sig}"
        return response


@pytest.mark.parametrize("relabel", [False, True], ids=["wrong-version-label", "forged-label"])
def test_signature_from_wrong_key_version_is_refused(root_client, key_name, relabel):
    make_ed25519_key(root_client, key_name)
    root_client.secrets.transit.rotate_key(name=key_name)
    signer = VaultTransitNoteSigner(_LatestVersionTransit(root_client, relabel), key_name, key_version=1)
    expected = "does not verify" if relabel else "signed with key version 2, expected 1"
    with pytest.raises(SigningError, match=expected):
        signer.sign(MESSAGE)


# -- AppRole -----------------------------------------------------------------------


def test_approle_login_helper_signs(openbao, root_client, key_name):
    make_ed25519_key(root_client, key_name)
    if "approle/" not in root_client.sys.list_auth_methods()["data"]:
        root_client.sys.enable_auth_method(method_type="approle")
    policy = f"{key_name}-signer"
    root_client.sys.create_or_update_policy(
        name=policy,
        policy=(
            f'path "transit/sign/{key_name}" {{ capabilities = ["update"] }}\n'
            f'path "transit/keys/{key_name}" {{ capabilities = ["read"] }}\n'
        ),
    )
    root_client.auth.approle.create_or_update_approle(
        role_name=key_name, token_policies=[policy], token_ttl="10m", token_no_default_policy=True
    )
    role_id = root_client.auth.approle.read_role_id(role_name=key_name)["data"]["role_id"]
    secret_id = root_client.auth.approle.generate_secret_id(role_name=key_name)["data"]["secret_id"]

    client = vault_client_from_approle(openbao.url, role_id, secret_id)

    assert client.token and client.token != openbao.root_token
    token_info = root_client.auth.token.lookup(client.token)["data"]
    assert token_info["policies"] == [policy]
    assert token_info["meta"]["role_name"] == key_name
    signer = VaultTransitNoteSigner(client, key_name)
    signature = signer.sign(MESSAGE)
    assert verifies(signer.verifier_key(), signature, MESSAGE)
    assert signer.verifier_key() == expected_verifier_key(
        signer.name, transit_public_key(root_client, key_name, 1)
    )
    # The AppRole token is scoped to this key only.
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.transit.create_key(name=f"{key_name}-other", key_type="ed25519")

    with pytest.raises(SigningError, match="AppRole login") as excinfo:
        vault_client_from_approle(openbao.url, role_id, "wrong-secret-id")
    assert isinstance(excinfo.value.__cause__, hvac.exceptions.VaultError)
