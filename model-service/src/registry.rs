//! The model registry: versioned artefacts in object storage (a local directory by default,
//! `s3://bucket/prefix` with the usual `AWS_*` environment variables).
//!
//! Layout under the root:
//! - `models/v000042/model.json`: the artefact ([`Model`]);
//! - `models/v000042/metadata.json`: its [`Metadata`] (training range, features, hold-out
//!   metrics against the baselines, data fingerprint, trigger and decision);
//! - `champion.json`: the [`Pointer`] to the model in service and the champions before it.
//!
//! Every trained model is stored, promoted or not. Versions are numbered in order by the one
//! writer (the service or the `train` command); `champion.json` is replaced in one put, so a
//! reader sees the old or the new pointer, never a mix. A rollback moves the pointer back to the
//! previous champion.

use std::sync::Arc;

use anyhow::{bail, Context};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::model::{Metadata, Model};

/// `champion.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pointer {
    pub version: String,
    /// Earlier champions, oldest first (the rollback targets).
    pub previous: Vec<String>,
    pub updated_at_ms: i64,
    pub reason: String,
}

#[derive(Clone)]
pub struct ModelRegistry {
    store: Arc<dyn ObjectStore>,
    url: String,
}

impl std::fmt::Debug for ModelRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelRegistry")
            .field("url", &self.url)
            .finish()
    }
}

pub fn version_name(n: u32) -> String {
    format!("v{n:06}")
}

pub fn version_number(v: &str) -> Option<u32> {
    v.strip_prefix('v').and_then(|n| n.parse().ok())
}

impl ModelRegistry {
    /// `s3://bucket[/prefix]`, `file:///dir` or a plain directory (created if missing).
    pub fn open(url: &str) -> anyhow::Result<Self> {
        let store: Arc<dyn ObjectStore> = if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                bail!("model store {url:?} has no bucket");
            }
            let s3 = object_store::aws::AmazonS3Builder::from_env()
                .with_url(format!("s3://{bucket}"))
                .build()
                .with_context(|| format!("model store {url}"))?;
            if prefix.trim_matches('/').is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(object_store::prefix::PrefixStore::new(
                    s3,
                    prefix.trim_matches('/'),
                ))
            }
        } else {
            let dir = url.strip_prefix("file://").unwrap_or(url);
            if dir.is_empty() || url.contains("://") && !url.starts_with("file://") {
                bail!("model store {url:?}: use a directory, file:///dir or s3://bucket/prefix");
            }
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating model store directory {dir}"))?;
            Arc::new(
                object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .with_context(|| format!("model store directory {dir}"))?,
            )
        };
        Ok(ModelRegistry {
            store,
            url: url.to_string(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        path: &Path,
    ) -> anyhow::Result<Option<T>> {
        match self.store.get(path).await {
            Ok(r) => {
                let bytes = r.bytes().await.with_context(|| format!("reading {path}"))?;
                Ok(Some(
                    serde_json::from_slice(&bytes)
                        .with_context(|| format!("{path} is not valid"))?,
                ))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {path} from {}", self.url)),
        }
    }

    async fn put_json<T: Serialize>(&self, path: &Path, value: &T) -> anyhow::Result<()> {
        let body = serde_json::to_vec_pretty(value)?;
        self.store
            .put(path, PutPayload::from(body))
            .await
            .with_context(|| format!("writing {path} to {}", self.url))?;
        Ok(())
    }

    /// Versions present, in order.
    pub async fn versions(&self) -> anyhow::Result<Vec<String>> {
        let prefix = Path::from("models");
        let metas: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .with_context(|| format!("listing models in {}", self.url))?;
        let mut v: Vec<u32> = metas
            .iter()
            .filter(|m| m.location.filename() == Some("metadata.json"))
            .filter_map(|m| {
                m.location
                    .parts()
                    .nth(1)
                    .and_then(|p| version_number(p.as_ref()))
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        Ok(v.into_iter().map(version_name).collect())
    }

    /// Stores a new version; sets `meta.version` and returns it.
    pub async fn save(&self, model: &Model, meta: &mut Metadata) -> anyhow::Result<String> {
        let next = self
            .versions()
            .await?
            .last()
            .and_then(|v| version_number(v))
            .unwrap_or(0)
            + 1;
        let version = version_name(next);
        meta.version = version.clone();
        // The artefact first: metadata.json makes a version visible.
        self.put_json(&Path::from(format!("models/{version}/model.json")), model)
            .await?;
        self.put_json(&Path::from(format!("models/{version}/metadata.json")), meta)
            .await?;
        Ok(version)
    }

    pub async fn metadata(&self, version: &str) -> anyhow::Result<Metadata> {
        self.get_json(&Path::from(format!("models/{version}/metadata.json")))
            .await?
            .with_context(|| format!("no model {version} in {}", self.url))
    }

    pub async fn load(&self, version: &str) -> anyhow::Result<(Model, Metadata)> {
        let meta = self.metadata(version).await?;
        let model: Model = self
            .get_json(&Path::from(format!("models/{version}/model.json")))
            .await?
            .with_context(|| format!("model {version} has metadata but no artefact"))?;
        model
            .validate()
            .map_err(|e| anyhow::anyhow!("model {version} cannot serve: {e}"))?;
        Ok((model, meta))
    }

    pub async fn list(&self) -> anyhow::Result<Vec<Metadata>> {
        let mut out = Vec::new();
        for v in self.versions().await? {
            out.push(self.metadata(&v).await?);
        }
        Ok(out)
    }

    pub async fn pointer(&self) -> anyhow::Result<Option<Pointer>> {
        self.get_json(&Path::from("champion.json")).await
    }

    /// The champion, if one was promoted.
    pub async fn load_champion(&self) -> anyhow::Result<Option<(Model, Metadata)>> {
        match self.pointer().await? {
            None => Ok(None),
            Some(p) => Ok(Some(self.load(&p.version).await?)),
        }
    }

    /// Makes `version` the champion; the current one becomes a rollback target.
    pub async fn promote(
        &self,
        version: &str,
        reason: &str,
        now_ms: i64,
    ) -> anyhow::Result<Pointer> {
        self.metadata(version).await?;
        let mut previous = Vec::new();
        if let Some(p) = self.pointer().await? {
            previous = p.previous;
            if p.version != version {
                previous.push(p.version);
            }
        }
        let p = Pointer {
            version: version.to_string(),
            previous,
            updated_at_ms: now_ms,
            reason: reason.to_string(),
        };
        self.put_json(&Path::from("champion.json"), &p).await?;
        Ok(p)
    }

    /// Moves the champion back to the previous one.
    pub async fn rollback(&self, now_ms: i64) -> anyhow::Result<Pointer> {
        let Some(mut p) = self.pointer().await? else {
            bail!("no champion in {}: nothing to roll back", self.url);
        };
        let Some(back) = p.previous.pop() else {
            bail!(
                "champion {} has no previous champion to roll back to",
                p.version
            );
        };
        self.load(&back).await?;
        let p = Pointer {
            version: back,
            previous: p.previous,
            updated_at_ms: now_ms,
            reason: format!("rollback from {}", p.version),
        };
        self.put_json(&Path::from("champion.json"), &p).await?;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names_sort_and_parse() {
        assert_eq!(version_name(42), "v000042");
        assert_eq!(version_number("v000042"), Some(42));
        assert_eq!(version_number("x1"), None);
        assert!(ModelRegistry::open("http://x/y").is_err());
    }
}
