//! API tokens and their scopes: what `[api.tokens]` maps a bearer token to, and the guard
//! that keeps the operator-only routes (raw cabinet commands, audit log, quarantine) for
//! operators.

use std::collections::BTreeSet;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use locker_schemas::{CarrierId, SiteId};
use serde::{Deserialize, Serialize};

use super::ApiError;
use crate::parcels::{Caller, Scope};

/// What a token in `[api.tokens]` stands for: a bare name is an operator (everything); a
/// table names the scope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenSpec {
    /// `"token" = "client name"`: an operator token.
    Operator(String),
    /// `"token" = { name = "dhl-api", scope = "carrier", carrier = "dhl" }` or
    /// `{ name = "hbf-manager", scope = "site_manager", sites = ["berlin-hbf"] }`.
    Scoped(ScopedToken),
}

/// A token with an explicit scope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopedToken {
    pub name: String,
    pub scope: ScopeName,
    #[serde(default)]
    pub carrier: Option<CarrierId>,
    #[serde(default)]
    pub sites: BTreeSet<SiteId>,
}

/// The scope names of gateway.toml.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScopeName {
    Operator,
    Carrier,
    SiteManager,
}

impl From<&str> for TokenSpec {
    fn from(name: &str) -> Self {
        TokenSpec::Operator(name.to_owned())
    }
}

impl From<String> for TokenSpec {
    fn from(name: String) -> Self {
        TokenSpec::Operator(name)
    }
}

impl TokenSpec {
    /// The caller this token authenticates.
    pub fn caller(&self) -> Caller {
        match self {
            TokenSpec::Operator(name) => Caller {
                client: name.clone(),
                scope: Scope::Operator,
            },
            TokenSpec::Scoped(t) => Caller {
                client: t.name.clone(),
                scope: match (t.scope, &t.carrier) {
                    (ScopeName::Operator, _) => Scope::Operator,
                    (ScopeName::Carrier, Some(c)) => Scope::Carrier { carrier: c.clone() },
                    // refused by `validate`; never more than the narrowest scope
                    (ScopeName::Carrier, None) => Scope::SiteManager {
                        sites: BTreeSet::new(),
                    },
                    (ScopeName::SiteManager, _) => Scope::SiteManager {
                        sites: t.sites.clone(),
                    },
                },
            },
        }
    }

    /// A carrier token names its carrier; a site manager's names at least one site.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            TokenSpec::Scoped(t) if t.scope == ScopeName::Carrier && t.carrier.is_none() => {
                Err(format!(
                    "api.tokens: the carrier token {:?} needs carrier = \"<carrier id>\"",
                    t.name
                ))
            }
            TokenSpec::Scoped(t) if t.scope == ScopeName::SiteManager && t.sites.is_empty() => {
                Err(format!(
                    "api.tokens: the site manager token {:?} needs sites = [\"<site id>\", ...]",
                    t.name
                ))
            }
            _ => Ok(()),
        }
    }
}

/// Lets only operator tokens through.
pub async fn operator_only(req: Request, next: Next) -> Response {
    match req.extensions().get::<Caller>().map(|c| &c.scope) {
        Some(Scope::Operator) => next.run(req).await,
        Some(other) => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this route needs an operator token (this token's scope is {})",
                other.name()
            ),
        )
        .into_response(),
        None => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "no token").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_in_toml_map_to_scopes() {
        let t: std::collections::HashMap<String, TokenSpec> = toml::from_str(
            r#"
            "op-token-000000000001" = "ops"
            "dhl-token-00000000001" = { name = "dhl-api", scope = "carrier", carrier = "dhl" }
            "mgr-token-00000000001" = { name = "hbf", scope = "site_manager", sites = ["berlin-hbf"] }
            "#,
        )
        .expect("toml");
        assert_eq!(t["op-token-000000000001"].caller().scope, Scope::Operator);
        assert_eq!(
            t["dhl-token-00000000001"].caller().scope,
            Scope::Carrier {
                carrier: CarrierId::new("dhl").expect("id")
            }
        );
        assert!(matches!(
            t["mgr-token-00000000001"].caller().scope,
            Scope::SiteManager { .. }
        ));
        let bad: TokenSpec = toml::from_str::<std::collections::HashMap<String, TokenSpec>>(
            r#"x = { name = "n", scope = "carrier" }"#,
        )
        .expect("toml")
        .remove("x")
        .expect("x");
        assert!(bad.validate().is_err());
    }
}
