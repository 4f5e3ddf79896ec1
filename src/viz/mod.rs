//! Drawing: colour maps, heat-map overlays, panels and plots.
