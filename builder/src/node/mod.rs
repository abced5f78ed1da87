//! Node composition: k3s, mesh agent, users, immutable root, per-node seeds, cloud user-data.
