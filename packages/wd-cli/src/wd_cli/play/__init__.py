"""`wd play`: drive the world model live in a web page and run its tasks from forms.

drive.py holds the drive's logic (keys -> actions, window scheduling, the LongVideo it grows), turns.py the one
model worker every tab's work queues for, player.py a tab's live drive, tasks.py the task forms, uploads.py the
checked uploads, server.py the starlette app and cli.py the command.
"""
