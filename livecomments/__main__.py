from livecomments.cli import main

main()
