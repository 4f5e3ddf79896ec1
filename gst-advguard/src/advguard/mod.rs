//! The `advguard` element: `imp.rs` implements it, `guard.rs` is the only place that uses the
//! advguard library's detector/engine API, `pixels.rs` scales frames and draws the overlay.

mod guard;
mod imp;
mod pixels;

use gst::glib;
use gst::prelude::*;

glib::wrapper! {
    /// The `advguard` video filter: passes frames through and guards them on a worker thread.
    pub struct Advguard(ObjectSubclass<imp::Advguard>) @extends gst_base::BaseTransform, gst::Element, gst::Object;
}

/// Registers the element type under the factory name `advguard`.
pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "advguard",
        gst::Rank::NONE,
        Advguard::static_type(),
    )
}
