"""Tools run by hand that train the files shipped in `assets/`: the tiny-digits miniature
(`miniature`) and the reference digit classifier (`reference`). No job imports them (a test
checks every rule's code fingerprint): jobs load what these wrote."""
