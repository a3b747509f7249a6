//! The operator's view of `vaultsync-render` (shared with the CSI provider): the same functions, with the API's
//! decoding strategies mapped onto the crate's.

use vaultsync_api::secret::Decoding as ApiDecoding;
pub use vaultsync_render::{Comparison, RenderError, SecretData, compare, data_hmac, digest_key_id, extract, key_id};
pub use vaultsync_stores::objects::decoding;

/// Decodes a value as the VaultSecret asks.
pub fn decode(value: Vec<u8>, strategy: ApiDecoding, object: &str) -> Result<Vec<u8>, RenderError> {
    vaultsync_render::decode(value, decoding(strategy), object)
}
