//! Templates: Tera with confd's functions.
