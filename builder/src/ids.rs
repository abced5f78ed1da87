//! Identifiers derived from the build seed (disk GUIDs, filesystem UUIDs, serials).
