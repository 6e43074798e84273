//! `framework keys`: the environment's keyset of PII data keys.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::idcard::Project;
use crate::pii::KeysetOptions;
use crate::pii::keyset::{self, Keyset, RootKey};

/// What `framework keys` does.
#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Make the environment's keyset if missing, and a data key for every PII domain of the
    /// idcards that has none (wrapped under the root keys at hand).
    Create,
    /// Add a new data key to a domain and make it the one new values are encrypted with; values
    /// written before still decrypt, by their key id.
    Rotate {
        /// The key domain (an idcard `pii:` entry's `domain`).
        #[arg(long)]
        domain: String,
    },
    /// Wrap every data key under another root key too, so an environment (or cloud) holding only
    /// that root key reads the data; or drop a root key's wrappings.
    Rewrap {
        /// File with the other root key (base64 of 32 bytes), e.g. made by `keys new-root`.
        #[arg(long, conflicts_with = "remove_root")]
        add_root_file: Option<PathBuf>,
        /// Fingerprint of a root key whose wrappings go (a key wrapped by nothing else is kept).
        #[arg(long)]
        remove_root: Option<String>,
    },
    /// Write a new random root key to a file (mode 0600); keep it out of the repository.
    NewRoot {
        #[arg(long)]
        out: PathBuf,
    },
    /// The keyset's domains, data key ids, the primary one and the root keys that wrap each
    /// (fingerprints only; no key material is ever shown).
    List,
    /// After a rotation: rewrite the lake's tables (bronze, reject, silver, quarantine and
    /// silver's extra tables) so every value is under its domain's primary key again, which a
    /// deterministic column needs for equality across the rotation. Values already under the
    /// primary key and strings that are not ciphertext are left alone; a table with nothing to
    /// rewrite gets no commit. Gold is derived: rebuild it after (`framework build --full-refresh`).
    ReEncrypt {
        /// Table (idcard name) to rewrite; repeat for several (default: every table).
        #[arg(long)]
        table: Vec<String>,
    },
    /// Crypto-shredding: erase a subject's keys in a domain (for `pii:` entries with a
    /// `subject:`), so that its values, wherever they were copied (topic, bronze, silver, gold,
    /// older Delta versions), no longer decrypt; `pii_decrypt` gives null for them. Keep backups
    /// of the subject key files in mind: a copy made before still holds the key.
    Forget {
        /// The key domain (the `pii:` entry's `domain`).
        #[arg(long)]
        domain: String,
        /// The subject, as its subject column holds it (e.g. a `customer_unique_id`).
        #[arg(long)]
        subject: String,
    },
}

/// Runs a `keys` command for `environment` over the idcards of `project` (beside `project_dir`)
/// and, for `re-encrypt`, the tables of `lake`.
pub fn run(
    command: KeysCommand,
    environment: &str,
    project: &Project,
    project_dir: &Path,
    lake: &crate::lake::Lake,
    runtime: &tokio::runtime::Runtime,
) -> Result<()> {
    let options = KeysetOptions::for_environment(project_dir, environment);
    match command {
        KeysCommand::Create => create(&options, environment, project),
        KeysCommand::Rotate { domain } => rotate(&options, &domain),
        KeysCommand::Rewrap {
            add_root_file,
            remove_root,
        } => match (add_root_file, remove_root) {
            (Some(file), None) => add_root(&options, &file),
            (None, Some(fingerprint)) => remove_root_key(&options, &fingerprint),
            _ => bail!("say --add-root-file FILE or --remove-root FINGERPRINT"),
        },
        KeysCommand::NewRoot { out } => new_root_file(&out),
        KeysCommand::List => list(&options, environment),
        KeysCommand::Forget { domain, subject } => forget(&options, project, &domain, &subject),
        KeysCommand::ReEncrypt { table } => re_encrypt(&options, project, &table, lake, runtime),
    }
}

/// `keys create`: a keyset for the environment with a data key per PII domain of the idcards
/// (domains it has are kept).
fn create(options: &KeysetOptions, environment: &str, project: &Project) -> Result<()> {
    let roots = keyset::root_keys(options, true)?;
    let domains = crate::pii::domains(project);
    let (_, added) = keyset::ensure(options, domains.keys(), &roots)?;
    println!(
        "{}: environment `{environment}`, {} domain(s) added{}; wrapped under root key(s) {}",
        options.path.display(),
        added.len(),
        if added.is_empty() {
            String::new()
        } else {
            format!(" ({})", added.join(", "))
        },
        fingerprints(&roots)
    );
    Ok(())
}

/// `keys rotate`: a new primary data key for `domain`; the older ones still decrypt.
fn rotate(options: &KeysetOptions, domain: &str) -> Result<()> {
    let roots = keyset::root_keys(options, false)?;
    let id = keyset::update(options, |keyset| {
        if !keyset.domains.contains_key(domain) {
            return Err(keyset::Error::UnknownDomain {
                path: options.path.clone(),
                domain: domain.to_owned(),
                known: keyset
                    .domains
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        // Check the root keys at hand open the keyset before adding to it.
        keyset.unlock(&options.path, &roots)?;
        Ok(keyset.add_key(domain, &roots))
    })?;
    println!(
        "{}: domain `{domain}` now encrypts with data key {id}; older keys still decrypt",
        options.path.display()
    );
    Ok(())
}

/// `keys rewrap --add-root-file`: every data key also wrapped under the root key of `file`.
fn add_root(options: &KeysetOptions, file: &Path) -> Result<()> {
    let roots = keyset::root_keys(options, false)?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let new_root = RootKey::parse(
        text.lines().next().unwrap_or_default(),
        &file.display().to_string(),
        Some(1),
    )?;
    let added = keyset::update(options, |keyset| {
        keyset.rewrap(&options.path, &roots, &new_root)
    })?;
    println!(
        "{}: {added} data key(s) now also wrapped under root key {}",
        options.path.display(),
        new_root.fingerprint()
    );
    Ok(())
}

/// `keys rewrap --remove-root`: the wrappings under `fingerprint` removed, unless a data key
/// would then be wrapped under no root key.
fn remove_root_key(options: &KeysetOptions, fingerprint: &str) -> Result<()> {
    let dropped = keyset::update(options, |keyset| {
        let orphans: Vec<u32> = keyset
            .domains
            .values()
            .flat_map(|d| &d.keys)
            .filter(|k| k.wrapped.iter().all(|w| w.root == fingerprint))
            .map(|k| k.id)
            .collect();
        if !orphans.is_empty() {
            return Err(keyset::Error::WouldLose {
                path: options.path.clone(),
                fingerprint: fingerprint.to_owned(),
                keys: format!("{orphans:?}"),
            });
        }
        Ok(keyset.drop_root(fingerprint))
    })?;
    println!(
        "{}: {dropped} wrapping(s) under root key {fingerprint} removed",
        options.path.display()
    );
    Ok(())
}

/// `keys new-root`: a new root key file (never over an existing one).
fn new_root_file(out: &Path) -> Result<()> {
    if out.exists() {
        bail!(
            "{} exists; a root key file is never overwritten (data keys wrapped under it would be lost)",
            out.display()
        );
    }
    let key = keyset::make_root_file(out)?;
    println!(
        "{}: new root key {} (mode 0600; keep it out of the repository)",
        out.display(),
        key.fingerprint()
    );
    Ok(())
}

/// `keys list`: each domain's data keys, the primary marked, and the root keys wrapping them.
fn list(options: &KeysetOptions, environment: &str) -> Result<()> {
    let Some(keyset) = Keyset::load(&options.path)? else {
        bail!(
            "{}: no keyset for environment `{environment}`\n  hint: `framework keys create --env {environment}`",
            options.path.display()
        );
    };
    println!(
        "{} (environment `{}`)",
        options.path.display(),
        keyset.environment
    );
    for (name, domain) in &keyset.domains {
        for key in &domain.keys {
            let roots: Vec<&str> = key.wrapped.iter().map(|w| w.root.as_str()).collect();
            println!(
                "  {name:<16} key {:>10}{}  created {}  wrapped under {}",
                key.id,
                if key.id == domain.primary {
                    " (primary)"
                } else {
                    "          "
                },
                key.created,
                roots.join(", ")
            );
        }
    }
    Ok(())
}

/// `keys forget`: the keys of `subject` in `domain` erased (crypto-shredding).
fn forget(options: &KeysetOptions, project: &Project, domain: &str, subject: &str) -> Result<()> {
    let domains = crate::pii::domains(project);
    let keyring = keyset::open(options, &domains)?;
    let keys = keyring.domains.get(domain).with_context(|| {
        format!(
            "no PII domain `{domain}` in {} (domains: {})",
            options.path.display(),
            keyring
                .domains
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let erased = keyring.subjects.forget(domain, keys, subject)?;
    // The subject is not echoed: it may itself identify a person.
    if erased == 0 {
        println!("domain `{domain}`: no key for that subject (never seen, or already forgotten)");
    } else {
        println!(
            "domain `{domain}`: erased {erased} subject key(s); the subject's values no \
             longer decrypt (pii_decrypt gives null)"
        );
    }
    Ok(())
}

/// `keys re-encrypt`: the PII values of `table` (every table when empty) encrypted again under
/// their domains' primary keys.
fn re_encrypt(
    options: &KeysetOptions,
    project: &Project,
    table: &[String],
    lake: &crate::lake::Lake,
    runtime: &tokio::runtime::Runtime,
) -> Result<()> {
    let keys = keyset::open(options, &crate::pii::domains(project))?;
    for name in table {
        if project.table(name).is_none() {
            bail!(
                "unknown table `{name}`\n  hint: tables with an idcard: {}",
                project.names().join(", ")
            );
        }
    }
    let mut total = 0;
    for t in project
        .tables
        .iter()
        .filter(|t| table.is_empty() || table.iter().any(|n| n == t.name()))
    {
        for (layer, name) in crate::pii::reencrypt::targets(t) {
            let done = runtime.block_on(crate::pii::reencrypt::table(
                lake,
                &keys,
                t.name(),
                layer,
                &name,
            ))?;
            if done.values > 0 {
                println!(
                    "{layer}/{name}: {} value(s) encrypted again under the primary keys",
                    done.values
                );
            }
            total += done.values;
        }
    }
    println!(
        "re-encrypted {total} value(s); every value is under its domain's primary key{}",
        if total > 0 {
            "\n  hint: gold tables that copy a PII column keep the old ciphertext until rebuilt: `framework build --full-refresh`"
        } else {
            ""
        }
    );
    Ok(())
}

fn fingerprints(roots: &[RootKey]) -> String {
    roots
        .iter()
        .map(RootKey::fingerprint)
        .collect::<Vec<_>>()
        .join(", ")
}
