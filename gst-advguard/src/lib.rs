//! `libgstadvguard.so`: the advguard guard as a GStreamer element.
//!
//! ```text
//! gst-launch-1.0 filesrc location=clip.mp4 ! decodebin ! videoconvert \
//!     ! advguard model-name=squeezenet1.1 profile=cam.toml ! videoconvert ! autovideosink
//! ```
//!
//! The element passes video through (with the explain overlay drawn when `overlay=true`),
//! scores frames on its own worker thread, attaches the latest scores to every buffer as a
//! `GstVideoRegionOfInterestMeta`, and posts one `advguard-event` element message per event
//! message (start / update / end). See the README section "GStreamer element".

mod advguard;

pub use advguard::Advguard;

/// Registers the `advguard` element with a plugin (also usable for static registration in tests).
fn plugin_init(plugin: &gst::Plugin) -> Result<(), gst::glib::BoolError> {
    advguard::register(plugin)
}

gst::plugin_define!(
    advguard,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    env!("CARGO_PKG_VERSION"),
    "Apache-2.0",
    "gst-advguard",
    "gst-advguard",
    // No public home yet: GStreamer shows this as the origin URL.
    "unpublished"
);
