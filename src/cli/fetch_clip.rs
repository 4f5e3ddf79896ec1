//! `advguard fetch-clip`: the demo clips, found or downloaded like the models (URL + sha256).

use advguard::engine::manifest::{self, sha256_file};
use anyhow::{Context, bail};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Built-in clip list: name, file, URL, sha256.
const CLIPS: &str = include_str!("../../engines/clips.toml");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClipFile {
    clip: Vec<Clip>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Clip {
    name: String,
    file: String,
    url: String,
    sha256: String,
}

/// Arguments of `advguard fetch-clip`.
#[derive(clap::Args)]
pub struct Args {
    /// Clip name (car-detection, one-by-one-person-detection, bottle-detection).
    pub name: String,
    /// Download from this URL instead of the built-in one (a mirror); the sha256 is still checked.
    #[arg(long)]
    pub url: Option<String>,
}

/// Prints the path of a verified local copy of the clip, downloading it if needed.
pub fn run(a: Args) -> anyhow::Result<()> {
    let list: ClipFile = toml::from_str(CLIPS).context("built-in clip list")?;
    let Some(clip) = list.clip.iter().find(|c| c.name == a.name) else {
        let names: Vec<&str> = list.clip.iter().map(|c| c.name.as_str()).collect();
        bail!("unknown clip {:?} (known: {})", a.name, names.join(", "));
    };
    let shared = advguard::data_dir().join("videos").join(&clip.file);
    let cached = clips_cache().join(&clip.file);
    for p in [&shared, &cached] {
        if matches(p, &clip.sha256) {
            println!("{}", p.display());
            return Ok(());
        }
    }
    let url = a.url.as_deref().unwrap_or(&clip.url);
    manifest::fetch(url, &cached, &clip.sha256)
        .with_context(|| format!("fetching clip {}", clip.name))?;
    println!("{}", cached.display());
    Ok(())
}

/// `$ADVGUARD_CACHE/clips`, or `~/.cache/advguard/clips`.
fn clips_cache() -> PathBuf {
    let models = manifest::cache_dir();
    match std::env::var_os("ADVGUARD_CACHE") {
        Some(_) => models.join("clips"),
        None => models
            .parent()
            .map_or(models.clone(), Path::to_path_buf)
            .join("clips"),
    }
}

/// A file is used only if its checksum is the published one: a partial or altered clip is not.
fn matches(p: &Path, sha: &str) -> bool {
    p.is_file() && sha256_file(p).is_ok_and(|g| g.eq_ignore_ascii_case(sha))
}
