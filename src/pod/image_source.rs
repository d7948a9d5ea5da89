//! The pod worker's seam to images: look one up by the name a manifest gives.

use super::image::{Image, ImageError, ImageStore};

/// Where a container's image comes from; the node's [`ImageStore`] is one implementation.
pub trait ImageSource {
    /// The image named `name` (a reference or `sha256:` id).
    fn image(&self, name: &str) -> Result<Image, ImageError>;
}

impl ImageSource for ImageStore {
    fn image(&self, name: &str) -> Result<Image, ImageError> {
        self.get(name)
    }
}
