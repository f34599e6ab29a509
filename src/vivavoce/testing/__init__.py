"""Test doubles that speak real protocols (Twilio Media Streams), for tests, benchmarks and users."""
