//! The ketama ring behind `ConsistentHash`. (Being written.)
