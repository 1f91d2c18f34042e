"""The booking app the library grew out of: stations, customers with encrypted PII, bookings."""
