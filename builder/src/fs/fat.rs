//! FAT32
