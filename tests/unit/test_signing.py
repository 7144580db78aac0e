"""The signature format and key sets (pure): the documented example, key ids, the ConfigMap's data."""

from __future__ import annotations

import pytest

from contract.annotation import (
    NODEPORTS_KEY,
    SIGNATURE_KEY,
    Annotation,
    CidrRule,
    NodePortVerdict,
    PolicyRef,
    SourceSet,
    read_signed,
    render_annotations,
)
from contract.signing import (
    Signer,
    SigningKeyError,
    VerifierKeys,
    key_id,
    public_keys_from_data,
)

DOC_SEED = b"0123456789abcdef0123456789abcdef"


def test_the_example_of_docs_annotation_md() -> None:
    annotation = Annotation(
        PolicyRef("shop", "allow-office", "5f0c2d4e-0000-4000-8000-000000000001"),
        (
            NodePortVerdict(
                30080,
                "TCP",
                "web",
                80,
                ("IPv4",),
                SourceSet(False, (CidrRule("198.51.100.0/24", ("198.51.100.128/25",)),)),
            ).entry(),
            NodePortVerdict(30443, "TCP", "web", 443, ("IPv4",), SourceSet.nobody()).entry(),
        ),
    )
    signer = Signer.from_seed(DOC_SEED)
    rendered = render_annotations(annotation, signer)
    assert signer.public.key_id == "fb7970219e26d1f4" == key_id(signer.public.raw)
    assert signer.public.pem() == (
        b"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAI7xUkSwebpLEqGglyGfif/3FVb/71CRPF6Jqv//ull0=\n"
        b"-----END PUBLIC KEY-----\n"
    )
    assert rendered[SIGNATURE_KEY] == (
        "ed25519:fb7970219e26d1f4:"
        "t3Qoh4EMgRw5t1EJN9iyapa10Hb1zeL/urXBotVQ8tQN3ed7xcs5eLQWmuyBkBrwraXMdCCZJeY6VJ/6tUX/Bw=="
    )
    # A verifier holding only the public key (as the ConfigMap carries it) reads it back.
    keys = VerifierKeys(public_keys_from_data({"current": signer.public.pem().decode()}, "ConfigMap"))
    verified = read_signed(rendered, "shop", "allow-office", "5f0c2d4e-0000-4000-8000-000000000001", keys)
    assert verified == annotation
    assert rendered[NODEPORTS_KEY].startswith('{"nodePorts":[')


def test_configmap_data_gives_current_then_previous_without_duplicates() -> None:
    new, old = Signer.from_seed(b"n" * 32), Signer.from_seed(b"o" * 32)
    data = {"current": new.public.pem().decode(), "previous": old.public.pem().decode()}
    assert public_keys_from_data(data, "cm") == (new.public, old.public)
    assert public_keys_from_data({**data, "previous": data["current"]}, "cm") == (new.public,)
    with pytest.raises(SigningKeyError, match="cm has no data key 'current'; run `python -m certs install`"):
        public_keys_from_data({"previous": data["previous"]}, "cm")
    with pytest.raises(SigningKeyError, match="cm key 'previous': no PEM public key"):
        public_keys_from_data({**data, "previous": "garbage"}, "cm")


def test_verifier_keys_compare_by_key_bytes() -> None:
    a, b = Signer.from_seed(b"a" * 32), Signer.from_seed(b"b" * 32)
    assert VerifierKeys((a.public,)) == Signer.from_seed(b"a" * 32).verifier()
    assert VerifierKeys((a.public,)) != VerifierKeys((a.public, b.public))
    assert VerifierKeys((a.public,)) != VerifierKeys((a.public,), (b"legacy",))
    assert hash(VerifierKeys((a.public,))) == hash(a.verifier())
