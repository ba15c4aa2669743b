//! DNS discovery. (Being written.)
