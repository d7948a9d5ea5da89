//! Data paths. One folder-local module per backend; nothing outside `backend/` needs to know
//! which one runs: the daemon only sees [`Backend`].
