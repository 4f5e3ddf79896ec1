//! (stage skeleton; filled in by its owner)
