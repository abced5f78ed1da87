//! Pinned downloads: HTTP/file fetch with resume, the content-addressed cache, the lockfile.
