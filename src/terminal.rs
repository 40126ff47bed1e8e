//! Terminal requests (`verify`, `check_deposit`): checked, forwarded to the merchant's
//! `terminal_url` and answered in the method's dialect within the project's budget.

use std::sync::Arc;

use bytes::Bytes;
use hyper::{Response, StatusCode};

use crate::http::{Body, json};
use crate::projects::Projects;

/// Terminal request handling; built once, shared by all connections.
pub struct Terminal {}

impl Terminal {
    pub fn new(_config: &crate::config::Config) -> Self {
        Terminal {}
    }

    pub async fn handle(
        &self,
        _projects: Arc<Projects>,
        _body: Bytes,
        _max_depth: usize,
    ) -> Response<Body> {
        json(
            StatusCode::OK,
            r#"{"code":500,"error_description":"terminal requests are not served yet"}"#,
        )
    }
}
