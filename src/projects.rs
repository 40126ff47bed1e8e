//! The running view of the configured projects: secrets resolved and keyed, URLs
//! parsed, endpoints' filters ready. Built from a validated `Config` and swapped whole
//! on reload, so a request sees one consistent snapshot.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, Endpoint as EndpointConfig, Project as ProjectConfig};
use crate::signature::Secrets;
use crate::store::EndpointKey;
use crate::webhook;

/// One project as requests see it.
#[derive(Debug)]
pub struct Project {
    pub id: u64,
    pub secrets: Secrets,
    /// Payment method of the terminal (sets `verify`'s dialect).
    pub method: Option<String>,
    pub terminal_url: Option<hyper::Uri>,
    pub terminal_budget: Duration,
    amount_min: Option<i64>,
    amount_max: Option<i64>,
    pub endpoints: Vec<Arc<Endpoint>>,
    /// The bearer token of its merchant backends; `None`: the merchant listener refuses
    /// every request for it.
    pub merchant_token: Option<MerchantToken>,
}

/// A project's merchant token. Its `Debug` prints no part of it.
pub struct MerchantToken(String);

impl std::fmt::Debug for MerchantToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MerchantToken(..)")
    }
}

impl MerchantToken {
    /// Whether `given` is this token, compared in constant time (neither the length nor
    /// the content of the token leaks by timing).
    pub fn matches(&self, given: &[u8]) -> bool {
        crate::admin::constant_time_eq(given, self.0.as_bytes())
    }
}

/// A merchant endpoint that receives a project's events.
#[derive(Debug)]
pub struct Endpoint {
    pub key: EndpointKey,
    pub name: String,
    pub url: hyper::Uri,
    pub signing_key: webhook::Key,
    pub methods: Option<Vec<String>>,
    pub operation_types: Option<Vec<String>>,
    pub statuses: Option<Vec<String>>,
    pub max_in_flight: usize,
    pub timeout: Duration,
}

/// What routing looks at in an event.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteFields<'a> {
    pub method: Option<&'a str>,
    pub operation_type: Option<&'a str>,
    /// Operation status and payment status: a status filter passes on either.
    pub statuses: [Option<&'a str>; 2],
}

impl Endpoint {
    /// True when every configured filter passes. Method names compare without case
    /// (the platform sends both `kassa24` and `Kassa24`).
    pub fn wants(&self, f: &RouteFields<'_>) -> bool {
        let any = |list: &Option<Vec<String>>, values: &[Option<&str>]| match list {
            None => true,
            Some(list) => values
                .iter()
                .flatten()
                .any(|v| list.iter().any(|x| x.eq_ignore_ascii_case(v))),
        };
        any(&self.methods, &[f.method])
            && any(&self.operation_types, &[f.operation_type])
            && any(&self.statuses, &f.statuses)
    }

    fn build(
        project: u64,
        e: &EndpointConfig,
        defaults: &crate::config::Delivery,
    ) -> Result<Self, String> {
        let secret = e.secret.resolve()?;
        Ok(Self {
            key: EndpointKey::new(project, &e.name),
            name: e.name.clone(),
            url: crate::config::check_url(&e.url)?,
            signing_key: webhook::Key::parse(&secret)
                .ok_or_else(|| format!("endpoint {}: secret is not whsec_<base64>", e.name))?,
            methods: e.methods.clone(),
            operation_types: e.operation_types.clone(),
            statuses: e.statuses.clone(),
            max_in_flight: e.max_in_flight.unwrap_or(defaults.max_in_flight),
            timeout: e.timeout.unwrap_or(defaults.timeout),
        })
    }
}

impl Project {
    /// check_deposit limits for `method`, minor units, inclusive.
    pub fn amount_limits(&self, method: &str) -> (i64, i64) {
        let (min, max) = if method == "kassa24" {
            crate::terminal::KASSA24_LIMITS
        } else {
            (1, i64::MAX)
        };
        (
            self.amount_min.unwrap_or(min),
            self.amount_max.unwrap_or(max),
        )
    }

    fn build(p: &ProjectConfig, config: &Config) -> Result<Self, String> {
        let secrets = p
            .secrets
            .iter()
            .map(|s| s.resolve())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            id: p.id,
            secrets: Secrets::new(&secrets),
            method: p.method.clone(),
            terminal_url: p
                .terminal_url
                .as_deref()
                .map(crate::config::check_url)
                .transpose()?,
            terminal_budget: p.terminal_budget,
            amount_min: p.terminal_amount_min,
            amount_max: p.terminal_amount_max,
            endpoints: p
                .endpoints
                .iter()
                .map(|e| Endpoint::build(p.id, e, &config.delivery).map(Arc::new))
                .collect::<Result<_, _>>()?,
            merchant_token: p
                .merchant_token
                .as_ref()
                .map(|t| t.resolve().map(MerchantToken))
                .transpose()?,
        })
    }
}

/// Every project by id.
#[derive(Debug, Default)]
pub struct Projects {
    by_id: HashMap<u64, Arc<Project>>,
}

impl Projects {
    /// Resolves a validated config (secrets are read again: they may have rotated).
    pub fn build(config: &Config) -> Result<Self, String> {
        let mut by_id = HashMap::new();
        for p in &config.projects {
            by_id.insert(p.id, Arc::new(Project::build(p, config)?));
        }
        Ok(Self { by_id })
    }

    pub fn get(&self, id: u64) -> Option<&Arc<Project>> {
        self.by_id.get(&id)
    }

    /// The project named by a `project_id` value as the canonical string writes it.
    pub fn by_text(&self, id: &[u8]) -> Option<&Arc<Project>> {
        std::str::from_utf8(id)
            .ok()?
            .parse()
            .ok()
            .and_then(|id| self.get(id))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Project>> {
        self.by_id.values()
    }

    /// Every endpoint of every project, by key.
    pub fn endpoints(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        self.by_id.values().flat_map(|p| p.endpoints.iter())
    }
}
