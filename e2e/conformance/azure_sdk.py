"""Drives vaultsync's Azure test servers with Microsoft's own Python SDK clients.

Run by e2e/tests/azure_sdk.rs, one phase per process (the test injects faults and checks the
servers' call counts between phases):

    python azure_sdk.py credentials|secrets|throttled|keys|certificates

Configuration comes from the environment (see the test). The Key Vault clients run with their
default api-version and with challenge-resource verification on. Every check prints one JSON line
{"check": name, "ok": bool, "detail": ...}; the last line is a summary with the SDK versions and
api-versions used. The exit code is 0 only if every check passed.
"""

import base64
import json
import os
import socket
import sys
import traceback
from datetime import datetime, timedelta, timezone
from importlib import metadata

# Names under .localhost are loopback (RFC 6761); the system resolver here does not know them.
_getaddrinfo = socket.getaddrinfo


def _loopback_names(host, *args, **kwargs):
    if isinstance(host, str) and host.lower().endswith(".localhost"):
        host = "127.0.0.1"
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _loopback_names

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError  # noqa: E402
from azure.identity import (  # noqa: E402
    ClientSecretCredential,
    ManagedIdentityCredential,
    WorkloadIdentityCredential,
)
from azure.keyvault.certificates import (  # noqa: E402
    CertificateClient,
    CertificateContentType,
    CertificatePolicy,
    KeyType as CertificateKeyType,
)
from azure.keyvault.keys import KeyClient, KeyCurveName  # noqa: E402
from azure.keyvault.secrets import SecretClient  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402
from cryptography.hazmat.primitives.serialization import pkcs12  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

ENV = os.environ
RESULTS = []
API_VERSIONS = {}


def check(name, condition, detail=""):
    RESULTS.append({"check": name, "ok": bool(condition), "detail": str(detail)[-900:]})
    print(json.dumps(RESULTS[-1]), flush=True)
    return bool(condition)


def expect_error(name, call, status, error_type=HttpResponseError):
    try:
        call()
    except error_type as error:
        return check(name, error.status_code == status, f"status {error.status_code}: {error.message}")
    except Exception as error:  # noqa: BLE001 - any other failure is this check's failure
        return check(name, False, f"{type(error).__name__}: {error}")
    return check(name, False, "the call succeeded")


def record_api_version(name, client):
    API_VERSIONS[name] = client.api_version


def secret_credential():
    return ClientSecretCredential(
        ENV["TENANT_ID"],
        ENV["SECRET_CLIENT_ID"],
        ENV["CLIENT_SECRET"],
        authority=ENV["AUTHORITY_HOST"],
        # The authority is not one of Microsoft's, so Microsoft's instance discovery cannot vouch for it.
        disable_instance_discovery=True,
    )


# === phases ===


def credentials():
    scope = ENV["RESOURCE"] + "/.default"
    token = secret_credential().get_token(scope)
    check("client secret credential gets the issued token", token.token == ENV["ACCESS_TOKEN"])
    check("client secret token expiry is in the future", token.expires_on > datetime.now().timestamp())

    workload = WorkloadIdentityCredential(
        tenant_id=ENV["TENANT_ID"],
        client_id=ENV["WORKLOAD_CLIENT_ID"],
        token_file_path=ENV["AZURE_FEDERATED_TOKEN_FILE"],
        authority=ENV["AUTHORITY_HOST"],
        disable_instance_discovery=True,
    )
    token = workload.get_token(scope)
    check("workload identity credential exchanges the service-account token", token.token == ENV["ACCESS_TOKEN"])

    # AZURE_POD_IDENTITY_AUTHORITY_HOST points the SDK's instance metadata client at the test endpoint.
    token = ManagedIdentityCredential().get_token(scope)
    check("managed identity (system-assigned) gets a token after retried faults", token.token == ENV["ACCESS_TOKEN"])
    token = ManagedIdentityCredential(client_id=ENV["MANAGED_CLIENT_ID"]).get_token(scope)
    check("managed identity (user-assigned client_id) gets a token", token.token == ENV["ACCESS_TOKEN"])
    try:
        ManagedIdentityCredential(client_id="no-such-identity").get_token(scope)
        check("an unknown managed identity is refused", False, "a token was issued")
    except Exception as error:  # noqa: BLE001 - the SDK wraps the 400 in its own error type
        check("an unknown managed identity is refused", "Identity not found" in str(error), error)


def secrets():
    client = SecretClient(ENV["VAULT_URL"], secret_credential())
    record_api_version("secrets", client)
    first = client.set_secret("conformance-secret", "value-one", content_type="text/plain", tags={"team": "a"})
    second = client.set_secret("conformance-secret", "value-two")
    check("set returns the value and a version", first.value == "value-one" and first.properties.version)
    check("versions differ", first.properties.version != second.properties.version)
    latest = client.get_secret("conformance-secret")
    check("get latest", latest.value == "value-two" and latest.properties.version == second.properties.version)
    pinned = client.get_secret("conformance-secret", first.properties.version)
    check(
        "get a version with its content type and tags",
        pinned.value == "value-one" and pinned.properties.content_type == "text/plain"
        and pinned.properties.tags == {"team": "a"},
    )
    props = latest.properties
    check(
        "attributes as the SDK reads them",
        props.enabled is True and props.created_on is not None and props.updated_on is not None
        and props.recovery_level == "Recoverable+Purgeable" and props.recoverable_days == 90,
        props,
    )

    for i in range(28):
        client.set_secret("conformance-many-versions", f"v{i}")
    versions = list(client.list_properties_of_secret_versions("conformance-many-versions"))
    check("versions listing follows nextLink across pages", len(versions) == 28, len(versions))
    check("version items carry attributes", all(v.enabled is True and v.created_on for v in versions))
    for i in range(27):
        client.set_secret(f"conformance-name-{i:02}", "v")
    names = [p.name for p in client.list_properties_of_secrets()]
    wanted = {f"conformance-name-{i:02}" for i in range(27)}
    check("secrets listing follows nextLink across pages", wanted <= set(names) and len(names) >= 29, len(names))
    check("listing items carry no value", all(not hasattr(p, "value") for p in client.list_properties_of_secrets()))

    disabled = client.update_secret_properties("conformance-secret", second.properties.version, enabled=False)
    check("update answers the new attributes", disabled.enabled is False)
    expect_error("a disabled secret is forbidden", lambda: client.get_secret("conformance-secret"), 403)
    client.update_secret_properties("conformance-secret", second.properties.version, enabled=True)
    expect_error("a missing secret is not found", lambda: client.get_secret("never-set"), 404, ResourceNotFoundError)

    deleted = client.begin_delete_secret("conformance-secret").result()
    check(
        "delete answers recovery id and dates",
        deleted.recovery_id and deleted.deleted_date and deleted.scheduled_purge_date > deleted.deleted_date,
        deleted,
    )
    expect_error("a deleted secret is not found", lambda: client.get_secret("conformance-secret"), 404, ResourceNotFoundError)
    got = client.get_deleted_secret("conformance-secret")
    check("get deleted secret", got.name == "conformance-secret" and got.recovery_id == deleted.recovery_id)
    listed = [d.name for d in client.list_deleted_secrets()]
    check("list deleted secrets", "conformance-secret" in listed, listed)
    expect_error(
        "a deleted name cannot be set again", lambda: client.set_secret("conformance-secret", "again"), 409
    )
    recovered = client.begin_recover_deleted_secret("conformance-secret").result()
    check("recover", recovered.name == "conformance-secret")
    check("a recovered secret reads again", client.get_secret("conformance-secret").value == "value-two")
    client.begin_delete_secret("conformance-secret").result()
    client.purge_deleted_secret("conformance-secret")
    expect_error(
        "a purged secret is gone", lambda: client.get_deleted_secret("conformance-secret"), 404, ResourceNotFoundError
    )


def throttled():
    client = SecretClient(ENV["VAULT_URL"], secret_credential())
    record_api_version("secrets", client)
    started = datetime.now()
    value = client.get_secret("throttled-secret").value
    waited = (datetime.now() - started).total_seconds()
    check("a 429 with Retry-After is retried and then succeeds", value == "after-429")
    check("the SDK waited Retry-After before retrying", waited >= 1.0, f"{waited:.2f}s")


def keys():
    client = KeyClient(ENV["VAULT_URL"], secret_credential())
    record_api_version("keys", client)
    first = client.create_rsa_key("conformance-rsa", size=2048)
    second = client.create_rsa_key("conformance-rsa", size=3072)
    numbers = rsa.RSAPublicNumbers(int.from_bytes(second.key.e, "big"), int.from_bytes(second.key.n, "big"))
    check("RSA key: a public JWK of the asked size", numbers.public_key().key_size == 3072 and second.key_type == "RSA")
    check("RSA key operations", set(second.key_operations) >= {"sign", "verify", "encrypt", "decrypt"})
    got = client.get_key("conformance-rsa", first.properties.version)
    check("get a key version", got.key.n == first.key.n and got.id == first.id)
    check("get the latest key", client.get_key("conformance-rsa").properties.version == second.properties.version)
    versions = list(client.list_properties_of_key_versions("conformance-rsa"))
    check("key versions", {v.version for v in versions} == {first.properties.version, second.properties.version})
    curves = {
        KeyCurveName.p_256: ec.SECP256R1(),
        KeyCurveName.p_384: ec.SECP384R1(),
        KeyCurveName.p_521: ec.SECP521R1(),
    }
    for curve, crypto_curve in curves.items():
        name = "conformance-ec-" + curve.value.lower().replace("-", "")
        key = client.create_ec_key(name, curve=curve)
        point = ec.EllipticCurvePublicNumbers(int.from_bytes(key.key.x, "big"), int.from_bytes(key.key.y, "big"), crypto_curve)
        try:
            point.public_key()  # checks the point is on the curve
            on_curve = True
        except ValueError as error:
            on_curve = error
        check(f"EC key {curve.value}: a public JWK on the curve", key.key.crv == curve and on_curve is True, on_curve)
    listed = {k.name for k in client.list_properties_of_keys()}
    check("keys listing", {"conformance-rsa", "conformance-ec-p256", "conformance-ec-p521"} <= listed, listed)
    expect_error("a missing key is not found", lambda: client.get_key("never-made"), 404, ResourceNotFoundError)


def _issue(subject, key, issuer_name, issuer_key, ca):
    now = datetime.now(timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _chain():
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _issue("conformance root", root_key, "conformance root", root_key, True)
    intermediate_key = ec.generate_private_key(ec.SECP256R1())
    intermediate = _issue("conformance intermediate", intermediate_key, "conformance root", root_key, True)
    leaf_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = _issue("imported.example", leaf_key, "conformance intermediate", intermediate_key, False)
    return leaf_key, leaf, intermediate, root


def _same_key(private_key, certificate):
    der = serialization.Encoding.DER
    info = serialization.PublicFormat.SubjectPublicKeyInfo
    return private_key.public_key().public_bytes(der, info) == certificate.public_key().public_bytes(der, info)


def certificates():
    credential = secret_credential()
    client = CertificateClient(ENV["VAULT_URL"], credential)
    secrets = SecretClient(ENV["VAULT_URL"], credential)
    keys = KeyClient(ENV["VAULT_URL"], credential)
    record_api_version("certificates", client)

    policy = CertificatePolicy(
        issuer_name="Self",
        subject="CN=conformance.example, O=vaultsync",
        san_dns_names=["conformance.example", "www.conformance.example"],
        validity_in_months=6,
        key_type=CertificateKeyType.rsa,
        key_size=2048,
        exportable=True,
        content_type=CertificateContentType.pkcs12,
    )
    created = client.begin_create_certificate("conformance-cert", policy).result()
    leaf = x509.load_der_x509_certificate(bytes(created.cer))
    check("create self-signed: the certificate has the policy's subject", leaf.subject.rfc4514_string() in (
        "CN=conformance.example,O=vaultsync", "O=vaultsync,CN=conformance.example"), leaf.subject.rfc4514_string())
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    check("create self-signed: DNS names", sorted(names) == ["conformance.example", "www.conformance.example"], names)
    months = (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days
    check("create self-signed: about six months valid", 180 <= months <= 186, months)
    check("create self-signed: self-issued", leaf.issuer == leaf.subject)
    check(
        "certificate ids: key and secret of the same version",
        created.key_id.endswith("/keys/conformance-cert/" + created.properties.version)
        and created.secret_id.endswith("/secrets/conformance-cert/" + created.properties.version),
        (created.key_id, created.secret_id),
    )
    check("x5t is the SHA-1 thumbprint", created.properties.x509_thumbprint == leaf.fingerprint(hashes.SHA1()))
    read_policy = created.policy
    check(
        "the policy is answered",
        read_policy.issuer_name == "Self" and read_policy.key_type == "RSA" and read_policy.key_size == 2048
        and read_policy.content_type == CertificateContentType.pkcs12 and read_policy.validity_in_months == 6,
        read_policy.__dict__,
    )
    operation = client.get_certificate_operation("conformance-cert")
    check("the creation operation completed", operation.status == "completed" and operation.csr, operation.status)
    fetched_policy = client.get_certificate_policy("conformance-cert")
    check("get the policy", fetched_policy.subject == "CN=conformance.example, O=vaultsync", fetched_policy.subject)

    secret = secrets.get_secret("conformance-cert")
    check(
        "the backing secret is a managed PKCS#12 with the key id",
        secret.properties.content_type == "application/x-pkcs12" and secret.properties.managed is True
        and secret.properties.key_id == created.key_id,
        secret.properties.__dict__,
    )
    key, cert, extra = pkcs12.load_key_and_certificates(base64.b64decode(secret.value), None)
    check("the PFX (no password) holds the certificate and its key", cert == leaf and _same_key(key, leaf) and not extra)
    backing_key = keys.get_key("conformance-cert")
    jwk_n = int.from_bytes(backing_key.key.n, "big")
    check(
        "the backing key is managed and is the certificate's key",
        backing_key.properties.managed is True and jwk_n == leaf.public_key().public_numbers().n,
    )

    second = client.begin_create_certificate("conformance-cert", policy).result()
    got = client.get_certificate_version("conformance-cert", created.properties.version)
    check("get a certificate version", got.cer == created.cer and got.properties.version == created.properties.version)
    check("get the latest certificate", client.get_certificate("conformance-cert").properties.version == second.properties.version)
    versions = {v.version for v in client.list_properties_of_certificate_versions("conformance-cert")}
    check("certificate versions", versions == {created.properties.version, second.properties.version}, versions)

    ec_policy = CertificatePolicy(
        issuer_name="Self", subject="CN=ec.example", key_type=CertificateKeyType.ec, key_curve_name="P-384",
        content_type=CertificateContentType.pem,
    )
    ec_cert = client.begin_create_certificate("conformance-ec-cert", ec_policy).result()
    ec_secret = secrets.get_secret("conformance-ec-cert")
    pem = ec_secret.value.encode()
    ec_key = serialization.load_pem_private_key(pem, None)
    ec_leaf = x509.load_der_x509_certificate(bytes(ec_cert.cer))
    check(
        "EC P-384 certificate: PEM secret, key first and matching",
        ec_secret.properties.content_type == "application/x-pem-file" and pem.startswith(b"-----BEGIN PRIVATE KEY-----")
        and isinstance(ec_key, ec.EllipticCurvePrivateKey) and ec_key.curve.name == "secp384r1" and _same_key(ec_key, ec_leaf),
    )

    leaf_key, leaf_cert, intermediate, root = _chain()
    pfx = pkcs12.serialize_key_and_certificates(
        b"imported", leaf_key, leaf_cert, [root, intermediate], serialization.BestAvailableEncryption(b"pfx-password")
    )
    imported = client.import_certificate("conformance-pfx", pfx, password="pfx-password")
    check("import PFX: the certificate is the leaf", x509.load_der_x509_certificate(bytes(imported.cer)) == leaf_cert)
    check("import PFX: the derived policy", imported.policy.subject == "CN=imported.example" and imported.policy.content_type == CertificateContentType.pkcs12, imported.policy.subject)
    secret = secrets.get_secret("conformance-pfx")
    key, cert, extra = pkcs12.load_key_and_certificates(base64.b64decode(secret.value), None)
    check(
        "import PFX: the secret holds key, leaf and chain",
        cert == leaf_cert and _same_key(key, leaf_cert) and set(extra) == {intermediate, root},
    )

    leaf_key, leaf_cert, intermediate, root = _chain()
    key_pem = leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Out of order on purpose: root, leaf, intermediate.
    pem_in = key_pem + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (root, leaf_cert, intermediate))
    pem_policy = CertificatePolicy(issuer_name="Unknown", content_type=CertificateContentType.pem)
    imported = client.import_certificate("conformance-pem", pem_in, policy=pem_policy)
    check("import PEM: the certificate is the leaf", x509.load_der_x509_certificate(bytes(imported.cer)) == leaf_cert)
    secret = secrets.get_secret("conformance-pem")
    pem_out = secret.value.encode()
    chain = x509.load_pem_x509_certificates(pem_out)
    check(
        "import PEM: the secret is key, then leaf, intermediate, root",
        secret.properties.content_type == "application/x-pem-file" and pem_out.startswith(b"-----BEGIN PRIVATE KEY-----")
        and chain == [leaf_cert, intermediate, root] and _same_key(serialization.load_pem_private_key(pem_out, None), leaf_cert),
    )
    expect_error(
        "import with a wrong PFX password is refused",
        lambda: client.import_certificate("conformance-bad", pfx, password="wrong"),
        400,
    )
    listed = {c.name for c in client.list_properties_of_certificates()}
    check("certificates listing", {"conformance-cert", "conformance-pfx", "conformance-pem"} <= listed, listed)


PHASES = {
    "credentials": credentials,
    "secrets": secrets,
    "throttled": throttled,
    "keys": keys,
    "certificates": certificates,
}


def main():
    phase = sys.argv[1]
    try:
        PHASES[phase]()
    except Exception as error:  # noqa: BLE001 - reported as a failed check with the trace
        check(f"{phase}: no unexpected error", False, "".join(traceback.format_exception(error))[-1500:])
    packages = ["azure-core", "azure-identity", "azure-keyvault-secrets", "azure-keyvault-keys",
                "azure-keyvault-certificates", "msal", "cryptography"]
    summary = {
        "phase": phase,
        "passed": sum(r["ok"] for r in RESULTS),
        "failed": sum(not r["ok"] for r in RESULTS),
        "versions": {p: metadata.version(p) for p in packages},
        "api_versions": API_VERSIONS,
    }
    print(json.dumps({"summary": summary}), flush=True)
    sys.exit(0 if summary["failed"] == 0 and summary["passed"] > 0 else 1)


if __name__ == "__main__":
    main()
