"""The chaos soak (issue 15): a seeded job stream through several daemons while a seeded
fault schedule breaks things, then a checker of every invariant. ``bin/soak`` runs it;
``tests/soak/test_short_soak.py`` runs a short one in the suite."""
