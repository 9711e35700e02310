//! The pure parts of certificate renewal: a new key, its PKCS#10 request, reading a
//! certificate, and the checks a `cert` document must pass (PROTOCOL §9). No files, no clock.

use jiff::Timestamp;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use serde::Deserialize;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertError {
    #[error("cannot make a key: {0}")]
    KeyGen(String),
    #[error("cannot make the certificate request: {0}")]
    Csr(String),
    #[error("not a cert document: {0}")]
    Document(String),
    #[error("certificate: {0}")]
    Parse(String),
    #[error("no renewal is pending on this terminal (send cert_renew first)")]
    NoPending,
    #[error("request_id {got:?} does not answer the pending request {pending:?}")]
    WrongRequest { pending: String, got: String },
    #[error("the certificate is for another key than the one this terminal made for the request")]
    WrongKey,
    #[error("the certificate's subject CN is {got:?}, not this terminal's id {expected:?}")]
    WrongCn { expected: String, got: String },
    #[error("the certificate is not valid now (valid {not_before} to {not_after})")]
    NotValidNow {
        not_before: String,
        not_after: String,
    },
}

/// A new ECDSA P-256 key: PKCS#8 DER (kept on the terminal only) and its public point.
pub struct NewKey {
    pub pkcs8: Vec<u8>,
    pub public: Vec<u8>,
}

pub fn generate_key() -> Result<NewKey, CertError> {
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|e| CertError::KeyGen(e.to_string()))?;
    let pkcs8 = doc.as_ref().to_vec();
    let public = public_key_of(&pkcs8)?;
    Ok(NewKey { pkcs8, public })
}

/// The uncompressed public point of a PKCS#8 P-256 key.
pub fn public_key_of(pkcs8: &[u8]) -> Result<Vec<u8>, CertError> {
    let rng = SystemRandom::new();
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8, &rng)
        .map(|k| k.public_key().as_ref().to_vec())
        .map_err(|e| CertError::KeyGen(e.to_string()))
}

pub fn key_pem(pkcs8: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs8);
    let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    out
}

pub fn key_from_pem(pem: &[u8]) -> Result<Vec<u8>, CertError> {
    PrivatePkcs8KeyDer::from_pem_slice(pem)
        .map(|k| k.secret_pkcs8_der().to_vec())
        .map_err(|e| CertError::KeyGen(e.to_string()))
}

/// A PKCS#10 request, PEM, with subject CN = `cn`, signed by the key.
pub fn csr_pem(pkcs8: &[u8], cn: &str) -> Result<String, CertError> {
    let der = PrivatePkcs8KeyDer::from(pkcs8.to_vec());
    let kp = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CertError::Csr(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| CertError::Csr(e.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params
        .serialize_request(&kp)
        .and_then(|r| r.pem())
        .map_err(|e| CertError::Csr(e.to_string()))
}

/// What the agent needs to know about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub cn: Option<String>,
    pub public_key: Vec<u8>,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
}

/// The DER certificates of a PEM chain, in order.
pub fn chain_der(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Parse(e.to_string()))?;
    if chain.is_empty() {
        return Err(CertError::Parse("no PEM certificate found".into()));
    }
    Ok(chain)
}

pub fn parse_der(der: &[u8]) -> Result<CertInfo, CertError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| CertError::Parse(e.to_string()))?;
    let ts = |t: &x509_parser::time::ASN1Time| {
        Timestamp::from_second(t.timestamp()).map_err(|e| CertError::Parse(e.to_string()))
    };
    Ok(CertInfo {
        cn: cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_string),
        public_key: cert.public_key().subject_public_key.data.to_vec(),
        not_before: ts(&cert.validity().not_before)?,
        not_after: ts(&cert.validity().not_after)?,
    })
}

/// The leaf (first certificate) of a PEM chain.
pub fn parse_leaf_pem(pem: &[u8]) -> Result<CertInfo, CertError> {
    let chain = chain_der(pem)?;
    parse_der(chain[0].as_ref())
}

/// The `cert` document (PROTOCOL §9), after its signature held.
#[derive(Debug, Clone, Deserialize)]
pub struct CertDoc {
    pub request_id: String,
    pub certificate: String,
}

impl CertDoc {
    pub fn parse(payload: &[u8]) -> Result<Self, CertError> {
        serde_json::from_slice(payload).map_err(|e| CertError::Document(e.to_string()))
    }
}

/// The pending request a document must answer.
#[derive(Debug, Clone)]
pub struct Pending {
    pub request_id: String,
    pub public_key: Vec<u8>,
}

/// Accepted when the leaf's key is the pending key, its CN is the terminal id and it is valid
/// now (`skew_s` tolerated on `not_before`: a just-issued certificate on a slow clock).
pub fn check(
    doc: &CertDoc,
    pending: Option<&Pending>,
    terminal_id: &str,
    now: Timestamp,
    skew_s: u64,
) -> Result<CertInfo, CertError> {
    let pending = pending.ok_or(CertError::NoPending)?;
    if doc.request_id != pending.request_id {
        return Err(CertError::WrongRequest {
            pending: pending.request_id.clone(),
            got: doc.request_id.clone(),
        });
    }
    let info = parse_leaf_pem(doc.certificate.as_bytes())?;
    if info.public_key != pending.public_key {
        return Err(CertError::WrongKey);
    }
    if info.cn.as_deref() != Some(terminal_id) {
        return Err(CertError::WrongCn {
            expected: terminal_id.to_string(),
            got: info.cn.clone().unwrap_or_default(),
        });
    }
    let early = info.not_before.as_second() > now.as_second().saturating_add(skew_s as i64);
    if early || info.not_after.as_second() < now.as_second() {
        return Err(CertError::NotValidNow {
            not_before: crate::host::rfc3339(info.not_before),
            not_after: crate::host::rfc3339(info.not_after),
        });
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate for `pkcs8` with subject CN `cn`, rcgen's default validity (1975 to 4096).
    fn issue(pkcs8: &[u8], cn: &str) -> String {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let der = PrivatePkcs8KeyDer::from(pkcs8.to_vec());
        let kp = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.signed_by(&kp, &issuer).unwrap().pem()
    }

    #[test]
    fn csr_and_key_round_trip() {
        let k = generate_key().unwrap();
        let pem = csr_pem(&k.pkcs8, "sz-ft-0001").unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        let back = key_from_pem(key_pem(&k.pkcs8).as_bytes()).unwrap();
        assert_eq!(back, k.pkcs8);
        assert_eq!(public_key_of(&back).unwrap(), k.public);
    }

    #[test]
    fn checks_request_key_cn_and_validity() {
        let k = generate_key().unwrap();
        let other = generate_key().unwrap();
        let pending = Pending {
            request_id: "r1".into(),
            public_key: k.public.clone(),
        };
        let now: Timestamp = "2026-12-01T00:00:00Z".parse().unwrap();
        let doc = |pem: String, rid: &str| CertDoc {
            request_id: rid.into(),
            certificate: pem,
        };
        let good = issue(&k.pkcs8, "sz-ft-0001");
        let info = check(
            &doc(good.clone(), "r1"),
            Some(&pending),
            "sz-ft-0001",
            now,
            300,
        )
        .unwrap();
        assert_eq!(info.cn.as_deref(), Some("sz-ft-0001"));
        assert_eq!(
            check(&doc(good.clone(), "r1"), None, "sz-ft-0001", now, 300),
            Err(CertError::NoPending)
        );
        assert!(matches!(
            check(
                &doc(good.clone(), "r2"),
                Some(&pending),
                "sz-ft-0001",
                now,
                300
            ),
            Err(CertError::WrongRequest { .. })
        ));
        assert_eq!(
            check(
                &doc(issue(&other.pkcs8, "sz-ft-0001"), "r1"),
                Some(&pending),
                "sz-ft-0001",
                now,
                300
            ),
            Err(CertError::WrongKey)
        );
        assert!(matches!(
            check(
                &doc(issue(&k.pkcs8, "sz-ft-0002"), "r1"),
                Some(&pending),
                "sz-ft-0001",
                now,
                300
            ),
            Err(CertError::WrongCn { .. })
        ));
        let before: Timestamp = "1970-01-02T00:00:00Z".parse().unwrap();
        assert!(matches!(
            check(&doc(good, "r1"), Some(&pending), "sz-ft-0001", before, 300),
            Err(CertError::NotValidNow { .. })
        ));
        assert!(matches!(
            check(
                &doc("junk".into(), "r1"),
                Some(&pending),
                "sz-ft-0001",
                now,
                300
            ),
            Err(CertError::Parse(_))
        ));
    }
}
