//! `weftctl image`: import archives into a node's image store, list and remove images.

use std::io::Write;
use std::path::PathBuf;

use weft::pod::image::{familiar_name, Image, ImageError, ImageStore};
use weft::pod::image_gc::{self, GcError};
use weft::pod::layout::{DEFAULT_IMAGE_ROOT, DEFAULT_POD_ROOT};

/// `weftctl image`: import archives into and list a node's image store.
#[derive(Debug, Clone, clap::Args)]
pub struct ImageArgs {
    /// The image store (weftd's `--image-root`).
    #[arg(long, global = true, env = "WEFTD_IMAGE_ROOT", default_value = DEFAULT_IMAGE_ROOT)]
    pub image_root: PathBuf,
    /// weftd's `--pod-root`: the pods whose images are in use.
    #[arg(
        long,
        global = true,
        env = "WEFTD_POD_ROOT",
        default_value = DEFAULT_POD_ROOT
    )]
    pub pod_root: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: ImageCommand,
}

/// The `weftctl image` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ImageCommand {
    /// Import an OCI image layout archive or a `docker save` archive (plain or gzipped).
    Import {
        /// The archive file.
        file: PathBuf,
        /// Tag it NAME[:TAG] instead of the name recorded in the archive.
        #[arg(long)]
        name: Option<String>,
    },
    /// List the images in the store.
    Ls,
    /// Remove an image by NAME[:TAG] or by id (`sha256:<hex>`, with all its names). Refused
    /// while a pod uses it, unless `--force`: then it is untagged and kept until the pod goes.
    Rm {
        /// The image name or id.
        image: String,
        /// Untag an image a pod still uses; its content goes with the next prune or GC.
        #[arg(long)]
        force: bool,
    },
    /// Remove every image no pod uses.
    Prune,
}

/// `1.9MB`-style sizes, as `docker images` prints them.
fn human_size(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < units.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", units[unit])
    }
}

/// The `weftctl image ls` table.
fn render_images(images: &[Image]) -> String {
    let rows: Vec<[String; 3]> = images
        .iter()
        .map(|i| {
            let hex = i.id.trim_start_matches("sha256:");
            [
                familiar_name(&i.name).to_string(),
                hex[..hex.len().min(12)].to_string(),
                human_size(i.size),
            ]
        })
        .collect();
    let width = rows
        .iter()
        .map(|r| r[0].len())
        .chain(std::iter::once("IMAGE".len()))
        .max()
        .unwrap_or(5);
    let mut out = format!("{:<width$}   {:<12}   SIZE\n", "IMAGE", "ID");
    for [name, id, size] in rows {
        out.push_str(&format!("{name:<width$}   {id:<12}   {size}\n"));
    }
    out
}

/// Runs `weftctl image ...`, printing to `out`.
pub fn run(args: &ImageArgs, out: &mut impl Write) -> Result<(), GcError> {
    let store = ImageStore::open(&args.image_root)?;
    let stdout = |e| ImageError::Io {
        op: "write",
        path: PathBuf::from("stdout"),
        source: e,
    };
    match &args.command {
        ImageCommand::Import { file, name } => {
            let r = store.import(file, name.as_deref())?;
            Ok(writeln!(out, "imported {} ({})", familiar_name(&r.name), r.id).map_err(stdout)?)
        }
        ImageCommand::Ls => Ok(out
            .write_all(render_images(&store.list()?).as_bytes())
            .map_err(stdout)?),
        ImageCommand::Rm { image, force } => {
            let deleted = image_gc::remove(&store, &args.pod_root, image, *force)?;
            let what = if deleted {
                "removed"
            } else {
                "untagged (kept while a pod uses it)"
            };
            Ok(writeln!(out, "{what} {image}").map_err(stdout)?)
        }
        ImageCommand::Prune => {
            for id in image_gc::prune(&store, &args.pod_root)? {
                writeln!(out, "removed {id}").map_err(stdout)?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft::pod::image::ImageConfig;

    #[test]
    fn image_table_is_aligned() {
        let image = |name: &str, size| Image {
            name: name.to_string(),
            id: format!("sha256:{}", "ab".repeat(32)),
            rootfs: PathBuf::from("/x"),
            config: ImageConfig::default(),
            size,
        };
        let table = render_images(&[
            image("docker.io/library/busybox:latest", 1_982_256),
            image("example.com/a/b:v1", 12),
        ]);
        assert_eq!(
            table,
            "IMAGE                ID             SIZE\n\
             busybox:latest       abababababab   2.0MB\n\
             example.com/a/b:v1   abababababab   12B\n"
        );
    }
}
