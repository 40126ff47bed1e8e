//! placeholder
use super::{Feed, Store, StoreError};
use crate::config::Storage;
use std::sync::Arc;
pub async fn open(_storage: &Storage) -> Result<(Arc<dyn Store>, Feed), StoreError> {
    Err(StoreError::Refused("jetstream: not yet".into()))
}
