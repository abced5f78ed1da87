//! Filesystem writers: a [`crate::tree::Tree`] in, a filesystem image out.
