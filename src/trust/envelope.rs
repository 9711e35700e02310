//! The DSSE v1 envelope: its JSON shape, the PAE that is signed, and signing.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::signature::Ed25519KeyPair;
use serde::{Deserialize, Serialize};

use super::{Role, TrustError, keyid_of};

/// One entry of `signatures`. The signature stays base64 text here: a signature that does not
/// decode is just a bad signature, ignored like any other while the threshold still holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    pub keyid: String,
    pub sig: String,
}

#[derive(Deserialize, Serialize)]
struct Wire {
    #[serde(rename = "payloadType")]
    payload_type: String,
    payload: String,
    signatures: Vec<EnvelopeSignature>,
}

/// A parsed envelope: the payload is already decoded, nothing in it is trusted yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub payload_type: String,
    pub payload: Vec<u8>,
    pub signatures: Vec<EnvelopeSignature>,
}

impl Envelope {
    /// Parses the bytes as received. The size check comes first so an oversized message costs
    /// nothing but its length.
    pub fn parse(raw: &[u8], max_bytes: usize) -> Result<Self, TrustError> {
        if raw.len() > max_bytes {
            return Err(TrustError::TooLarge);
        }
        if !crate::limits::is_object_text(raw) {
            return Err(TrustError::Malformed(
                "an envelope is a JSON object; this is another kind of JSON value".into(),
            ));
        }
        let wire: Wire =
            serde_json::from_slice(raw).map_err(|e| TrustError::Malformed(e.to_string()))?;
        let payload = STANDARD
            .decode(wire.payload.as_bytes())
            .map_err(|e| TrustError::Malformed(format!("payload is not standard base64: {e}")))?;
        Ok(Envelope {
            payload_type: wire.payload_type,
            payload,
            signatures: wire.signatures,
        })
    }

    /// The envelope as compact JSON, the form `kiosk-admin sign` prints and the platform publishes.
    pub fn to_json(&self) -> String {
        let wire = Wire {
            payload_type: self.payload_type.clone(),
            payload: STANDARD.encode(&self.payload),
            signatures: self.signatures.clone(),
        };
        // Serialising a struct of strings cannot fail; fall back to an empty object rather than panic.
        serde_json::to_string(&wire).unwrap_or_else(|_| String::from("{}"))
    }

    /// The bytes every signature covers.
    pub fn pae(&self) -> Vec<u8> {
        pae(&self.payload_type, &self.payload)
    }
}

/// DSSE pre-authentication encoding: binds the type to the body so a signature over one
/// document type cannot be presented as another, without any JSON canonicalisation.
pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload_type.len() + body.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(body);
    out
}

/// Signs `payload` as a message of `role` with every key given, in order.
pub fn sign_envelope(role: Role, payload: &[u8], keys: &[&Ed25519KeyPair]) -> Envelope {
    use ring::signature::KeyPair;
    let payload_type = role.payload_type();
    let to_sign = pae(&payload_type, payload);
    let signatures = keys
        .iter()
        .map(|k| EnvelopeSignature {
            keyid: keyid_of(k.public_key().as_ref()),
            sig: STANDARD.encode(k.sign(&to_sign).as_ref()),
        })
        .collect();
    Envelope {
        payload_type,
        payload: payload.to_vec(),
        signatures,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        // The example from the DSSE v1 protocol description.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
    }

    #[test]
    fn parse_refuses_oversize_before_parsing() {
        assert!(matches!(
            Envelope::parse(b"{not json", 3),
            Err(TrustError::TooLarge)
        ));
        assert!(matches!(
            Envelope::parse(b"{not json", 100),
            Err(TrustError::Malformed(_))
        ));
    }

    #[test]
    fn parse_refuses_bad_shape_and_bad_base64() {
        let cases: [&[u8]; 5] = [
            br#"[]"#,
            br#"{"payloadType":"x","payload":"e30=","signatures":{}}"#,
            br#"{"payloadType":"x","signatures":[]}"#,
            br#"{"payloadType":"x","payload":"e30","signatures":[]}"#,
            br#"{"payloadType":"x","payload":"e30=","signatures":[{"sig":"AA=="}]}"#,
        ];
        for raw in cases {
            let r = Envelope::parse(raw, 1024);
            assert!(
                matches!(r, Err(TrustError::Malformed(_))),
                "{:?}: {r:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn to_json_roundtrips() {
        let kp = Ed25519KeyPair::from_seed_unchecked(&[7u8; 32]).unwrap();
        let env = sign_envelope(Role::Policy, b"{\"a\":1}", &[&kp]);
        let back = Envelope::parse(env.to_json().as_bytes(), 4096).unwrap();
        assert_eq!(back, env);
        assert_eq!(back.payload_type, "application/vnd.kiosk.policy+json");
    }
}
