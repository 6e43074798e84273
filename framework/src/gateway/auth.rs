//! Bearer tokens and their scopes.
//!
//! A token is never stored: the gateway keeps the SHA-256 of each token and compares digests in
//! constant time. Tokens come from a tokens file (`serve --tokens FILE`, YAML, outside the
//! repository) whose entries give a name, the token's SHA-256 in hex and scopes, or, on a
//! laptop, from `FRAMEWORK_GATEWAY_TOKEN`: one token with every scope.
//!
//! ```yaml
//! - name: loader
//!   token_sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//!   scopes: [ingest:orders, read:*]
//! ```
//!
//! Scopes: `read:<table>` (the read routes of a table or model), `ingest:<table>`, with `*` for
//! every table (`read:*`, `ingest:*`, or `*` for everything).

use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::problem::Problem;

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Read,
    Ingest,
    /// See a table's PII columns decrypted (with `read`).
    Pii,
}

impl Scope {
    fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Ingest => "ingest",
            Self::Pii => "pii",
        }
    }
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    token_sha256: String,
    scopes: Vec<String>,
}

#[derive(Debug, Clone)]
struct Token {
    name: String,
    digest: [u8; 32],
    scopes: Vec<String>,
}

/// The tokens the gateway accepts.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    tokens: Vec<Token>,
}

/// A tokens file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}\n  hint: {hint}")]
pub struct TokensError {
    path: String,
    reason: String,
    hint: &'static str,
}

const FILE_HINT: &str = "a YAML list of `{ name, token_sha256, scopes }`; the digest of a token is `printf %s \"$TOKEN\" | sha256sum`";

impl Tokens {
    /// The tokens of `file` (if given) and of `env_token` (if set: every scope).
    pub fn load(file: Option<&Path>, env_token: Option<&str>) -> Result<Self, TokensError> {
        let mut tokens = Vec::new();
        if let Some(path) = file {
            let err = |reason: String| TokensError {
                path: path.display().to_string(),
                reason,
                hint: FILE_HINT,
            };
            let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
            // The parser's message quotes the text it met, which may be a raw token: only
            // where it stopped is told.
            let entries: Vec<Entry> = serde_yaml_ng::from_str(&text).map_err(|e| {
                let at = e.location().map_or_else(String::new, |at| {
                    format!(" at line {}, column {}", at.line(), at.column())
                });
                err(format!(
                    "not a YAML list of tokens{at} (the text is not shown: it may hold a secret)"
                ))
            })?;
            for (i, entry) in entries.into_iter().enumerate() {
                let digest = decode_hex(&entry.token_sha256).ok_or_else(|| {
                    err(format!(
                        "entry {i} (`{}`): token_sha256 is not 64 hex digits",
                        entry.name
                    ))
                })?;
                for scope in &entry.scopes {
                    let known = scope == "*"
                        || scope.split_once(':').is_some_and(|(kind, table)| {
                            matches!(kind, "read" | "ingest" | "pii") && !table.is_empty()
                        });
                    if !known {
                        return Err(err(format!(
                            "entry {i} (`{}`): scope `{scope}` is not `read:<table>`, `ingest:<table>`, `pii:<table>` or `*`",
                            entry.name
                        )));
                    }
                }
                tokens.push(Token {
                    name: entry.name,
                    digest,
                    scopes: entry.scopes,
                });
            }
        }
        if let Some(token) = env_token.filter(|t| !t.is_empty()) {
            tokens.push(Token {
                name: "FRAMEWORK_GATEWAY_TOKEN".to_owned(),
                digest: Sha256::digest(token.as_bytes()).into(),
                scopes: vec!["*".to_owned()],
            });
        }
        Ok(Self { tokens })
    }

    /// Whether any token is configured (without one, reads are open and writes refused).
    pub fn any(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Checks the `Authorization` header for `scope` on `table`; returns the token's name.
    pub fn allow(
        &self,
        authorization: Option<&str>,
        scope: Scope,
        table: &str,
    ) -> Result<Option<String>, Problem> {
        if !self.any() {
            return match scope {
                Scope::Read => Ok(None),
                Scope::Pii => Err(Problem::unauthorized(
                    "decrypted PII needs a bearer token with the `pii` scope",
                )),
                Scope::Ingest => Err(Problem::unauthorized(
                    "writes need a bearer token, and this gateway has none configured",
                )
                .with_hint(
                    "start `framework serve` with FRAMEWORK_GATEWAY_TOKEN set (one token, every scope) or --tokens FILE",
                )),
            };
        }
        let Some(given) = authorization.and_then(|h| h.strip_prefix("Bearer ")) else {
            return Err(Problem::unauthorized(format!(
                "{} on `{table}` needs a bearer token",
                scope.name()
            ))
            .with_hint("send `Authorization: Bearer <token>`"));
        };
        let digest: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
        // Every token is compared, whichever matches, so the time does not tell which did.
        let mut found = None;
        for token in &self.tokens {
            if bool::from(token.digest.ct_eq(&digest)) {
                found = Some(token);
            }
        }
        let Some(token) = found else {
            return Err(Problem::unauthorized("the bearer token is not known"));
        };
        let wanted = format!("{}:{table}", scope.name());
        let wildcard = format!("{}:*", scope.name());
        if token
            .scopes
            .iter()
            .any(|s| s == "*" || *s == wanted || *s == wildcard)
        {
            Ok(Some(token.name.clone()))
        } else {
            Err(Problem::forbidden(format!(
                "token `{}` lacks the scope `{wanted}`",
                token.name
            )))
        }
    }
}

fn decode_hex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_per_table_and_wildcards() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens.yaml");
        let digest = |t: &str| {
            Sha256::digest(t.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        std::fs::write(
            &file,
            format!(
                "- {{ name: loader, token_sha256: {}, scopes: ['ingest:orders', 'read:*'] }}\n",
                digest("s3cret")
            ),
        )
        .unwrap();
        let tokens = Tokens::load(Some(&file), None).unwrap();
        let bearer = Some("Bearer s3cret");
        assert_eq!(
            tokens.allow(bearer, Scope::Ingest, "orders").unwrap(),
            Some("loader".to_owned())
        );
        assert!(tokens.allow(bearer, Scope::Read, "customers").is_ok());
        // Reading is not seeing PII in clear: that is its own scope.
        assert!(tokens.allow(bearer, Scope::Pii, "customers").is_err());
        assert!(
            Tokens::default()
                .allow(None, Scope::Pii, "customers")
                .is_err()
        );
        assert_eq!(
            tokens
                .allow(bearer, Scope::Ingest, "customers")
                .unwrap_err()
                .status,
            403
        );
        assert_eq!(
            tokens
                .allow(Some("Bearer nope"), Scope::Read, "orders")
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(
            tokens
                .allow(None, Scope::Read, "orders")
                .unwrap_err()
                .status,
            401
        );
        // No token configured: reads open, writes refused.
        let none = Tokens::default();
        assert!(none.allow(None, Scope::Read, "orders").is_ok());
        assert_eq!(
            none.allow(None, Scope::Ingest, "orders")
                .unwrap_err()
                .status,
            401
        );
    }

    #[test]
    fn a_bad_tokens_file_names_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens.yaml");
        std::fs::write(&file, "- { name: x, token_sha256: abc, scopes: ['*'] }\n").unwrap();
        let err = Tokens::load(Some(&file), None).unwrap_err().to_string();
        assert!(
            err.contains("entry 0 (`x`)") && err.contains("64 hex"),
            "{err}"
        );
    }

    #[test]
    fn a_tokens_file_that_is_not_yaml_tokens_never_shows_its_text() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens.yaml");
        for text in [
            "sk_live_SUPERSECRET123\n",
            "- { name: x, token: sk_live_SUPERSECRET123 }\n",
            "- name: x\n  token_sha256: [sk_live_SUPERSECRET123\n",
        ] {
            std::fs::write(&file, text).unwrap();
            let err = Tokens::load(Some(&file), None).unwrap_err().to_string();
            assert!(!err.contains("SUPERSECRET"), "{err}");
            assert!(
                err.contains("tokens.yaml: not a YAML list of tokens at line ")
                    && err.contains("hint: a YAML list of `{ name, token_sha256, scopes }`"),
                "{err}"
            );
        }
    }
}
