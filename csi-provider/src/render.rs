//! From fetched vault values to the volume's files: a JSON field when asked, the object's
//! encoding decoded, modes set, and the 1 MiB total enforced. Messages name files and objects,
//! never values.

use base64::{
    Engine as _,
    engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD},
};
use vaultsync_backend::{FetchedSecret, SecretBytes};

use vaultsync_render::{Decoding, ObjectSpec, certificate::PKCS12_CONTENT_TYPE};

use crate::{
    error::{Error, Result},
    params::{Encoding, FileSpec, Format, MAX_TOTAL_BYTES, Output, check_path},
    reader::Found,
};

/// One file to write.
#[derive(Clone, Debug)]
pub struct File {
    pub path: String,
    pub mode: u32,
    pub contents: SecretBytes,
}

/// What a mount produces: the files, and one version per object (id `<type>/<name>`).
#[derive(Clone, Debug, Default)]
pub struct Payload {
    pub files: Vec<File>,
    pub versions: Vec<(String, String)>,
}

impl Payload {
    pub fn total_bytes(&self) -> usize {
        self.files.iter().map(|f| f.contents.expose().len()).sum()
    }
}

/// Renders every file from its fetched object (`fetched[i]` belongs to `files[i]`).
pub fn payload(files: &[FileSpec], fetched: &[FetchedSecret]) -> Result<Payload> {
    let mut payload = Payload::default();
    let mut total = 0usize;
    for (spec, secret) in files.iter().zip(fetched) {
        let contents = file_contents(spec, secret)?;
        total += contents.expose().len();
        if total > MAX_TOTAL_BYTES {
            return Err(Error::invalid(
                spec.place.as_str(),
                format!("the files add up to more than the {MAX_TOTAL_BYTES} bytes (1 MiB) a volume may hold"),
            ));
        }
        if !payload.versions.iter().any(|(id, _)| *id == spec.id) {
            payload.versions.push((spec.id.clone(), secret.version.clone()));
        }
        payload.files.push(File { path: spec.path.clone(), mode: spec.mode, contents });
    }
    Ok(payload)
}

/// Adds the keys of a VaultSecret's `dataFrom` entries to the files of its `data` items, as the operator makes a
/// Secret: a `data` item of the same name wins; names are checked as file names, the total stays within 1 MiB.
pub fn with_data_from(payload: Payload, found: Vec<Found>) -> Result<Payload> {
    let mut files = Vec::new();
    let mut versions = Vec::new();
    for found in found {
        if payload.files.iter().any(|f| f.path == found.key) {
            continue;
        }
        check_path(&found.key, "dataFrom")?;
        if !versions.iter().any(|(id, _)| *id == found.id) {
            versions.push((found.id.clone(), found.version.clone()));
        }
        files.push(File { path: found.key, mode: 0o644, contents: found.value });
    }
    files.extend(payload.files);
    for version in payload.versions {
        if !versions.iter().any(|(id, _)| *id == version.0) {
            versions.push(version);
        }
    }
    let payload = Payload { files, versions };
    if payload.total_bytes() > MAX_TOTAL_BYTES {
        return Err(Error::invalid(
            "dataFrom",
            format!("the files add up to more than the {MAX_TOTAL_BYTES} bytes (1 MiB) a volume may hold"),
        ));
    }
    Ok(payload)
}

fn file_contents(spec: &FileSpec, secret: &FetchedSecret) -> Result<SecretBytes> {
    let format = match spec.output {
        Output::Value => None,
        // A PKCS#12 certificate secret as PEM; a PEM one (or any other value) as stored, then objectEncoding.
        Output::AzureSecret => {
            (secret.content_type.as_deref() == Some(PKCS12_CONTENT_TYPE)).then_some(Format::Pem).map(|f| (f, None))
        }
        Output::Render(format) => Some((format, Some(spec.encoding))),
    };
    if let Some((format, decoding)) = format {
        let decoding = match decoding {
            None | Some(Encoding::Utf8) => Decoding::None,
            Some(Encoding::Base64) => Decoding::Base64,
            Some(Encoding::Base64Url) => Decoding::Base64Url,
            Some(Encoding::Auto) => Decoding::Auto,
            Some(Encoding::Hex) => {
                return Err(Error::invalid(spec.place.as_str(), "hex encoding is for values, not certificates"));
            }
        };
        let object =
            ObjectSpec { object: &spec.object.name, kind: spec.object.kind, format, decoding, ..ObjectSpec::default() };
        // Messages of the render crate name the object and the problem, never the value.
        let rendered = vaultsync_render::render_object(secret, &object)
            .map_err(|e| Error::invalid(spec.place.as_str(), format!("{}: {e}", spec.id)))?;
        return Ok(rendered.value);
    }
    let selected = match &spec.field {
        None => secret.value.clone(),
        Some(field) => {
            let value: serde_json::Value = serde_json::from_slice(secret.value.expose()).map_err(|_| {
                Error::invalid(
                    spec.place.as_str(),
                    format!("{} is not a JSON object, so {field:?} cannot be picked", spec.id),
                )
            })?;
            match value.get(field) {
                Some(serde_json::Value::String(s)) => SecretBytes::new(s.as_bytes().to_vec()),
                Some(other) => SecretBytes::new(other.to_string().into_bytes()),
                None => {
                    return Err(Error::invalid(spec.place.as_str(), format!("{} has no field {field:?}", spec.id)));
                }
            }
        }
    };
    decode(spec, selected)
}

fn decode(spec: &FileSpec, value: SecretBytes) -> Result<SecretBytes> {
    let text = || std::str::from_utf8(value.expose()).map(str::trim);
    let failed = |what: &str| Error::invalid(spec.place.as_str(), format!("the value of {} is not {what}", spec.id));
    let decoded = match spec.encoding {
        Encoding::Utf8 => return Ok(value),
        Encoding::Base64 => {
            let text = text().map_err(|_| failed("base64"))?;
            STANDARD.decode(text).or_else(|_| STANDARD_NO_PAD.decode(text)).map_err(|_| failed("base64"))?
        }
        Encoding::Base64Url => {
            let text = text().map_err(|_| failed("base64url"))?;
            URL_SAFE.decode(text).or_else(|_| URL_SAFE_NO_PAD.decode(text)).map_err(|_| failed("base64url"))?
        }
        Encoding::Hex => {
            let text = text().map_err(|_| failed("hex"))?;
            hex(text).ok_or_else(|| failed("hex"))?
        }
        Encoding::Auto => {
            let Ok(text) = text() else { return Ok(value) };
            match [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD].iter().find_map(|e| e.decode(text).ok()) {
                Some(bytes) => bytes,
                None => return Ok(value),
            }
        }
    };
    Ok(SecretBytes::new(decoded))
}

fn hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::VaultObject;

    fn spec(field: Option<&str>, encoding: Encoding) -> FileSpec {
        FileSpec {
            path: "f".into(),
            mode: 0o644,
            object: VaultObject { mount: None, name: "o".into(), version: None, kind: Default::default() },
            id: "secret/o".into(),
            field: field.map(str::to_string),
            encoding,
            output: Output::Value,
            place: "objects[0]".into(),
        }
    }

    fn fetched(value: &str) -> FetchedSecret {
        FetchedSecret {
            value: SecretBytes::new(value.as_bytes().to_vec()),
            version: "v1".into(),
            content_type: None,
            attributes: Default::default(),
        }
    }

    #[test]
    fn fields_and_encodings() {
        let json = fetched(r#"{"user":"app","port":5432}"#);
        let one = |s: &FileSpec, f: &FetchedSecret| file_contents(s, f).map(|b| b.expose().to_vec());
        assert_eq!(one(&spec(Some("user"), Encoding::Utf8), &json).unwrap(), b"app");
        assert_eq!(one(&spec(Some("port"), Encoding::Utf8), &json).unwrap(), b"5432");
        assert_eq!(one(&spec(None, Encoding::Base64), &fetched("aGVsbG8=")).unwrap(), b"hello");
        assert_eq!(one(&spec(None, Encoding::Hex), &fetched("68656c6c6f")).unwrap(), b"hello");
        assert_eq!(one(&spec(None, Encoding::Auto), &fetched("plain text!")).unwrap(), b"plain text!");
        let missing = one(&spec(Some("nope"), Encoding::Utf8), &json).unwrap_err();
        assert!(missing.to_string().contains("objects[0]") && missing.to_string().contains("nope"), "{missing}");
        let bad = one(&spec(None, Encoding::Base64), &fetched("s3cr3t value!")).unwrap_err();
        assert!(!bad.to_string().contains("s3cr3t"), "the value must not appear: {bad}");
    }

    #[test]
    fn more_than_one_mebibyte_is_refused() {
        let big = "x".repeat(600 * 1024);
        let files = [spec(None, Encoding::Utf8), FileSpec { path: "g".into(), ..spec(None, Encoding::Utf8) }];
        let error = payload(&files, &[fetched(&big), fetched(&big)]).unwrap_err();
        assert!(matches!(error, Error::InvalidArgument { .. }) && error.to_string().contains("1 MiB"), "{error}");
    }
}
