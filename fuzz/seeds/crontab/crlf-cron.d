17 *	* * *	root	cd / && run-parts --report /etc/cron.hourly
0 0 * * * www-data	/usr/bin/php /var/www/cron.php % \%
